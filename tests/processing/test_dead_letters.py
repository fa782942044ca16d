"""Dead letters over real HTTP: list, inspect, replay one (applied exactly once, though the deal
workflow has seen that event id before), bulk replay by filter through a workflow with
progress, discard with a reason; every action audited; 409 when not dead-lettered."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlmodel import select

from store.models import AuditEntry
from tests.api.conftest import Api, native, uid, wait_for
from tests.processing.support import activities, native_created, post, status_of

ADMIN_SUBJECT = "bootstrap-admin"


async def test_replay_one_applies_it_exactly_once(live_api: Api) -> None:
    api = live_api
    source = api.create_source("hmac")
    pipeline = api.create_pipeline()
    deal, kind = uid("deal"), f"call-{uuid.uuid4().hex[:8]}"
    early = post(api, source, native("deal.activity", deal_id=deal, kind=kind))
    await status_of(api, early, "dead_lettered")
    post(api, source, native_created(deal, pipeline))

    listed = api.admin("GET", "/v1/dead-letters", params={"deal_id": deal}).json()
    assert [d["event_id"] for d in listed["data"]] == [early]
    detail = api.admin("GET", f"/v1/dead-letters/{early}").json()
    assert detail["status"] == "dead_lettered"
    assert "does not exist" in detail["last_error"]
    assert detail["payload"]["kind"] == kind
    assert [h["kind"] for h in detail["history"]] == ["processing"]

    resp = api.admin("POST", f"/v1/dead-letters/{early}/replay")
    assert resp.status_code == 200, resp.text
    assert resp.json()["replays"] == 1
    await status_of(api, early, "processed")
    assert activities(api, deal, kind) == 1

    # Not a dead letter any more: 409; unknown: 404.
    assert api.admin("POST", f"/v1/dead-letters/{early}/replay").status_code == 409
    assert api.admin("POST", "/v1/dead-letters/evt_nope/replay").status_code == 404

    # The relay hands the replayed event over once more (as after a crash between its signal
    # and its mark): the workflow drops it. A later event shows the deal got past it.
    with api.db.engine.begin() as conn:
        conn.execute(text("UPDATE events SET status = 'accepted' WHERE id = :i"), {"i": early})
    marker = post(api, source, native("deal.activity", deal_id=deal, kind="marker"))
    await status_of(api, marker, "processed")
    assert activities(api, deal, kind) == 1

    with api.db.session() as session:
        audit = session.exec(select(AuditEntry).where(AuditEntry.target == early)).all()
    assert [(a.action, a.actor) for a in audit] == [("dead_letter.replay", ADMIN_SUBJECT)]
    assert audit[0].at is not None


async def test_discard_with_a_reason(live_api: Api) -> None:
    api = live_api
    source = api.create_source("hmac")
    ghost = post(api, source, native("deal.stage_change_requested", deal_id=uid(), to_stage="x"))
    await status_of(api, ghost, "dead_lettered")
    resp = api.admin("POST", f"/v1/dead-letters/{ghost}/discard", json={"reason": "test noise"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "failed", "a status the contract lists, final"
    assert body["last_error"] == f"discarded by {ADMIN_SUBJECT}: test noise"
    assert body["history"][-1]["kind"] == "discarded"
    assert api.event(ghost)["status"] == "failed"
    assert ghost not in [d["event_id"] for d in api.admin("GET", "/v1/dead-letters").json()["data"]]
    assert body["history"][-1]["data"] == {"reason": "test noise"}
    again = api.admin("POST", f"/v1/dead-letters/{ghost}/discard", json={"reason": "again"})
    assert again.status_code == 409
    assert api.admin("POST", f"/v1/dead-letters/{ghost}/replay").status_code == 409
    assert api.admin("POST", f"/v1/dead-letters/{ghost}/discard", json={}).status_code == 422
    listed = api.admin("GET", "/v1/dead-letters", params={"source_id": source["id"]}).json()
    assert listed["data"] == []
    with api.db.session() as session:
        [entry] = session.exec(select(AuditEntry).where(AuditEntry.target == ghost)).all()
    assert entry.action == "dead_letter.discard" and entry.actor == ADMIN_SUBJECT
    assert entry.data == {"reason": "test noise"}


async def test_bulk_replay_by_filter(live_api: Api) -> None:
    api = live_api
    source = api.create_source("hmac")
    pipeline = api.create_pipeline()
    deal = uid("deal")
    kinds = [f"k{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    early = [post(api, source, native("deal.activity", deal_id=deal, kind=k)) for k in kinds]
    other = post(api, source, native("deal.activity", deal_id=uid(), kind="elsewhere"))
    for event_id in [*early, other]:
        await status_of(api, event_id, "dead_lettered")
    post(api, source, native_created(deal, pipeline))

    # Paginated like /v1/events.
    page = api.admin("GET", "/v1/dead-letters", params={"source_id": source["id"], "limit": 2})
    assert page.status_code == 200 and page.json()["has_more"] is True
    viewer = api.admin(
        "POST", "/v1/api-keys", json={"name": "v", "role": "viewer", "subject": "viv"}
    ).json()["key"]
    denied = api.http.post(
        "/v1/dead-letters/replay", json={}, headers={"Authorization": f"Bearer {viewer}"}
    )
    assert denied.status_code == 403

    resp = api.admin(
        "POST",
        "/v1/dead-letters/replay",
        json={"source_id": source["id"], "deal_id": deal, "batch": 2, "pause_seconds": 0},
    )
    assert resp.status_code == 202, resp.text
    replay_id = resp.json()["replay_id"]
    assert replay_id.startswith("replay-")

    def progress() -> dict[str, Any] | None:
        body = api.admin("GET", f"/v1/dead-letters/replays/{replay_id}").json()
        return body if body["status"] == "completed" else None

    done = await wait_for(progress)
    assert done["replayed"] == 3 and done["batches"] == 2
    for event_id in early:
        await status_of(api, event_id, "processed")
    assert [activities(api, deal, k) for k in kinds] == [1, 1, 1]
    assert api.event(other)["status"] == "dead_lettered", "outside the filter"
    with api.db.session() as session:
        entries = session.exec(
            select(AuditEntry).where(AuditEntry.action.in_(["dead_letter.bulk_replay"]))  # type: ignore[attr-defined]
        ).all()
    assert any(e.target == replay_id and e.actor == ADMIN_SUBJECT for e in entries)
    assert api.admin("GET", "/v1/dead-letters/replays/replay-nope").status_code == 404
