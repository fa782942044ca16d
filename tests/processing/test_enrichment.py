"""Enrichment: an event may name its deal by an id another system gave it (``deal_ref``), and
the relay resolves it through the deal links that ``external_ids`` declared, before the event
reaches a deal workflow. Real HTTP, real worker and dev server, both databases."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from api.relay import Pending, resolve_deals
from store import links
from store.db import Database
from store.events import NewEvent, accept_many
from tests.api.conftest import Api, dumps, native, sign_stripe, uid
from tests.processing.support import activities, native_created, post, status_of

STRIPE_MAPPING = {
    "events": {
        "invoice.paid": {
            "type": "deal.updated",
            "data": {
                "deal_ref": {"by": "'stripe_customer'", "id": "body.data.object.customer"},
                "fields": {"paid": "`true`", "invoice": "body.data.object.id"},
            },
        }
    }
}


def invoice_paid(customer: str) -> bytes:
    invoice = f"in_{uuid.uuid4().hex[:12]}"
    return dumps(
        {
            "id": f"evt_{uuid.uuid4().hex[:16]}",
            "type": "invoice.paid",
            "data": {"object": {"id": invoice, "customer": customer}},
        }
    )


def deal_of(api: Api, deal: str) -> dict[str, Any]:
    resp = api.admin("GET", f"/v1/deals/{deal}")
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_a_stripe_invoice_finds_its_deal_by_the_customer_id(live_api: Api) -> None:
    api = live_api
    form = api.create_source("hmac")
    stripe = api.create_source("stripe", mapping=STRIPE_MAPPING)
    pipeline = api.create_pipeline()
    deal, customer = uid("deal"), f"cus_{uuid.uuid4().hex[:12]}"
    first = post(
        api, form, native_created(deal, pipeline, external_ids={"stripe_customer": customer})
    )
    await status_of(api, first, "processed")

    body = invoice_paid(customer)
    tried = api.admin(
        "POST", f"/v1/sources/{stripe['id']}/mapping:test", json={"payload": orjson.loads(body)}
    ).json()
    assert tried["resolved_deal_id"] == deal, tried

    resp = api.webhook(stripe["id"], body, sign_stripe(stripe["secret"], body))
    assert resp.status_code == 202, resp.text
    event = await status_of(api, resp.json()["event_id"], "processed", "dead_lettered")
    assert event["status"] == "processed", event
    assert event["deal_id"] == deal, "the event's status shows the deal it was routed to"
    shown = deal_of(api, deal)
    assert shown["fields"]["paid"] is True
    assert shown["external_ids"] == {"stripe_customer": customer}
    found = api.admin("GET", "/v1/deals", params={"external_id": f"stripe_customer:{customer}"})
    assert [d["deal_id"] for d in found.json()["data"]] == [deal]


async def test_an_unknown_reference_is_dead_lettered_then_replayed_once_linked(
    live_api: Api,
) -> None:
    api = live_api
    form = api.create_source("hmac")
    pipeline = api.create_pipeline()
    deal, ticket = uid("deal"), f"T-{uuid.uuid4().hex[:8]}"
    await status_of(api, post(api, form, native_created(deal, pipeline)), "processed")
    kind = f"reply-{uuid.uuid4().hex[:6]}"
    early = post(
        api, form, native("deal.activity", deal_ref={"by": "helpdesk", "id": ticket}, kind=kind)
    )
    dead = await status_of(api, early, "dead_lettered", "processed")
    assert dead["status"] == "dead_lettered", dead
    assert f"no deal is linked to helpdesk '{ticket}'" in dead["last_error"]
    assert dead["deal_id"] is None
    assert dead["attempts"] == 1

    # The deal declares the ticket later; the replay now finds it.
    linked = post(
        api, form, native("deal.updated", deal_id=deal, external_ids={"helpdesk": ticket})
    )
    await status_of(api, linked, "processed")
    assert deal_of(api, deal)["external_ids"] == {"helpdesk": ticket}
    resp = api.admin("POST", f"/v1/dead-letters/{early}/replay")
    assert resp.status_code == 200, resp.text
    replayed = await status_of(api, early, "processed", "dead_lettered")
    assert replayed["status"] == "processed", replayed
    assert replayed["deal_id"] == deal
    assert activities(api, deal, kind) == 1, "applied exactly once"


def new_event(deal: str | None, payload: dict[str, Any], at: datetime) -> NewEvent:
    return NewEvent(
        id=f"evt_{uuid.uuid4().hex[:16]}",
        source_id="src_links",
        delivery_id=uuid.uuid4().hex,
        type="deal.updated",
        status="accepted",
        deal_id=deal,
        payload=payload,
        raw_body=b"{}",
        headers={},
        body_sha256="0" * 64,
        received_at=at,
    )


def test_links_follow_the_newest_declaration_and_a_duplicate_takes_nothing_back(
    own_db: Database,
) -> None:
    at = datetime.now(UTC)
    older = new_event("deal_a", {"external_ids": {"crm": "42"}}, at)
    newer = new_event("deal_b", {"external_ids": {"crm": "42"}}, at + timedelta(seconds=1))
    # Committed out of order, in one batch and then in two.
    accept_many(own_db, [newer, older])
    late = new_event("deal_z", {"external_ids": {"crm": "42"}}, at - timedelta(seconds=1))
    accept_many(own_db, [late])  # committed last, received first
    with own_db.engine.connect() as conn:
        assert links.resolve(conn, [("crm", "42")]) == {("crm", "42"): "deal_b"}
    moved = new_event("deal_c", {"external_ids": {"crm": "42"}}, at + timedelta(seconds=2))
    accept_many(own_db, [moved])
    again = NewEvent(**{**older.__dict__, "id": f"evt_{uuid.uuid4().hex[:16]}"})
    assert accept_many(own_db, [again])[again.id] == (older.id, True), "a duplicate delivery"
    with own_db.engine.connect() as conn:
        assert links.resolve(conn, [("crm", "42")]) == {("crm", "42"): "deal_c"}
        assert links.of_deal(conn, "deal_c") == {"crm": "42"}
        assert links.of_deal(conn, "deal_a") == {}

    # A deal has one id per namespace: a newer one releases the old; an older one changes
    # nothing.
    renamed = new_event("deal_c", {"external_ids": {"crm": "99"}}, at + timedelta(seconds=3))
    stale = new_event("deal_c", {"external_ids": {"crm": "77"}}, at + timedelta(seconds=2.5))
    accept_many(own_db, [renamed])
    accept_many(own_db, [stale])
    with own_db.engine.connect() as conn:
        assert links.of_deal(conn, "deal_c") == {"crm": "99"}
        assert links.resolve(conn, [("crm", "42"), ("crm", "77")]) == {}
    accept_many(
        own_db, [new_event("deal_c", {"external_ids": {"crm": "42"}}, at + timedelta(seconds=4))]
    )

    def pending(payload: dict[str, Any]) -> Pending:
        return Pending(
            id=f"evt_{uuid.uuid4().hex[:16]}",
            source_id="src_links",
            type="deal.activity",
            deal_id=None,
            payload=payload,
            received_at=at,
        )

    known = pending({"deal_ref": {"by": "crm", "id": "42"}, "kind": "call"})
    unknown = pending({"deal_ref": {"by": "crm", "id": "43"}, "kind": "call"})
    direct = Pending(**{**known.__dict__, "id": "evt_direct", "deal_id": "deal_x", "payload": {}})
    handed, refused = resolve_deals(own_db, [known, unknown, direct])
    assert [(p.id, p.deal_id) for p in handed] == [(known.id, "deal_c"), ("evt_direct", "deal_x")]
    assert refused == {
        unknown.id: "no deal is linked to crm '43' (deal_ref); a deal declares it in external_ids"
    }
