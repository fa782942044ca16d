"""Large payloads never jam a deal: a deal's fields are bounded (an event that would make them
larger fails, saying why), the relay cuts a deal's batch into signals under Temporal's payload
limit, and the deal goes on taking events and moves. Real HTTP, worker and dev server."""

from __future__ import annotations

import asyncio
import uuid

from api.relay import Pending, _pieces
from domain.sizes import MAX_DEAL_FIELDS_BYTES, PAYLOAD_BUDGET_BYTES
from tests.api.conftest import Api, assert_problem, dumps, native, sign_hmac, uid
from tests.processing.support import activities, native_created, post, status_of

FIELD = "x" * 200_000  # one field of ~200 KB: each event fits a deal, two of them do not


async def test_events_too_large_for_a_deal_fail_and_the_deal_goes_on(live_api: Api) -> None:
    api = live_api
    source = api.create_source("hmac")
    pipeline = api.create_pipeline()
    deal = uid("deal")
    await status_of(api, post(api, source, native_created(deal, pipeline)), "processed")
    # Sent back to back: the relay may claim them together, ~1 MB for one deal.
    sent = [
        post(api, source, native("deal.updated", deal_id=deal, fields={f"f{n}": FIELD}))
        for n in range(5)
    ]
    # Fields no deal may keep are refused at the door.
    raw = dumps(native("deal.updated", deal_id=deal, fields={"huge": "y" * 300_000}))
    refused = api.webhook(source["id"], raw, sign_hmac(source["secret"], raw, uid("dlv")))
    problem = assert_problem(refused, 422)
    assert problem["errors"][0]["loc"] == ["body", "data", "fields"]
    kind = f"call-{uuid.uuid4().hex[:6]}"
    after = post(api, source, native("deal.activity", deal_id=deal, kind=kind))
    first, *rest = [
        await status_of(api, event_id, "processed", "failed", "dead_lettered") for event_id in sent
    ]
    assert first["status"] == "processed", first
    for event in rest:
        assert event["status"] == "failed", event
        assert "a deal keeps at most 262,144 (256 KiB)" in event["last_error"]
    assert (await status_of(api, after, "processed", "failed", "dead_lettered"))["status"] == (
        "processed"
    )
    assert activities(api, deal, kind) == 1
    shown = api.admin("GET", f"/v1/deals/{deal}").json()
    assert shown["fields"]["f0"] == FIELD and "f1" not in shown["fields"]

    # A move whose fields would pass the budget is refused with the others' problems; a
    # normal move still goes through.
    # Off the loop: the worker runs on this test's event loop and must answer the update.
    resp = await asyncio.to_thread(
        api.admin,
        "POST",
        f"/v1/deals/{deal}/transitions",
        json={"to_stage": "qualified", "fields": {"extra": "z" * 100_000}},
    )
    assert resp.status_code == 422, resp.text
    assert any(e["loc"][-1] == "fields" for e in resp.json()["errors"]), resp.json()
    moved = await asyncio.to_thread(
        api.admin, "POST", f"/v1/deals/{deal}/transitions", json={"to_stage": "qualified"}
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["stage"] == "qualified"


def test_the_relay_cuts_a_deal_batch_into_signals_under_the_budget() -> None:
    from datetime import UTC, datetime

    def event(n: int, size: int) -> Pending:
        return Pending(
            id=f"evt_{n}",
            source_id="src",
            type="deal.updated",
            deal_id="d",
            payload={"deal_id": "d", "fields": {"v": "x" * size}},
            received_at=datetime.now(UTC),
        )

    events = [event(n, 300_000) for n in range(7)] + [event(7, 3_000_000), event(8, 10)]
    pieces = _pieces(events)
    assert [e.id for piece in pieces for e in piece] == [e.id for e in events], "order kept"
    for piece in pieces:
        if len(piece) > 1:
            assert sum(len(str(e.payload)) for e in piece) <= PAYLOAD_BUDGET_BYTES
    assert [len(p) for p in pieces] == [3, 3, 1, 1, 1]
    assert _pieces([]) == []
    assert MAX_DEAL_FIELDS_BYTES < PAYLOAD_BUDGET_BYTES
