"""The relay's claims: ``accepted`` → ``queued`` (claimed) → ``processing`` (in the deal
workflow's inbox) → an outcome. Two relays on one database hand each event over once; a claim
of a relay that died expires; what Temporal did not take goes back to ``accepted``."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

import api.relay
from api.relay import CLAIM_LEASE, Relay
from store.db import Database
from store.events import claim
from tests.processing.support import event_row, event_stub, plain_pipeline
from workflows.messages import EventBatch


def accepted(
    db: Database, deals: list[str], per_deal: int, payload: dict | None = None
) -> list[str]:
    """``per_deal`` ``deal.updated`` events for each deal, as the ingress stores them."""
    base = datetime.now(UTC) - timedelta(minutes=5)
    ids: list[str] = []
    with db.session() as session:
        for n in range(per_deal):
            for d, deal in enumerate(deals):
                event_id = f"evt_{uuid.uuid4().hex[:16]}"
                ids.append(event_id)
                session.add(
                    event_stub(
                        event_id,
                        source_id="src_claims",
                        status="accepted",
                        deal_id=deal,
                        payload=payload or {"deal_id": deal, "value": n},
                        received_at=base + timedelta(milliseconds=n * len(deals) + d),
                    )
                )
        session.commit()
    return ids


def statuses(db: Database) -> Counter[str]:
    with db.engine.connect() as conn:
        return Counter(
            dict(conn.execute(text("SELECT status, count(*) FROM events GROUP BY status")).all())
        )


async def signalled_event_ids(client: Client, deal: str) -> list[str]:
    """Every event id the deal's workflow received, from its history (start signal included)."""
    ids: list[str] = []
    async for ev in client.get_workflow_handle(f"deal-{deal}").fetch_history_events():
        if ev.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            payloads = ev.workflow_execution_signaled_event_attributes.input.payloads
            (batch,) = await pydantic_data_converter.decode(payloads, [EventBatch])
            ids.extend(e.event_id for e in batch.events)
    return ids


async def terminate(client: Client, deals: list[str]) -> None:
    for deal in deals:
        try:
            await client.get_workflow_handle(f"deal-{deal}").terminate("test over")
        except Exception:
            pass


def claims_meeting_first(monkeypatch: pytest.MonkeyPatch, relays: int) -> None:
    """The relays' first claims start together, each in its own thread: they race for the
    same oldest rows, and neither can drain the table before the other has begun (a loaded
    machine could otherwise delay one relay's first pass until the other had done them all)."""
    barrier = threading.Barrier(relays, timeout=30)
    calls = 0
    lock = threading.Lock()
    real = api.relay.claim

    def claim_together(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        with lock:
            calls += 1
            first = calls <= relays
        if first:
            barrier.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(api.relay, "claim", claim_together)


async def test_two_relays_on_one_database_hand_each_event_over_once(
    dev_env: WorkflowEnvironment, own_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = dev_env.client
    deals = [f"deal_{uuid.uuid4().hex[:10]}" for _ in range(30)]
    ids = accepted(own_db, deals, per_deal=10)
    queue = f"claims-{uuid.uuid4().hex[:8]}"  # no worker: the workflows only collect signals
    relays = [Relay(own_db, lambda: client, task_queue=queue, batch_size=40) for _ in range(2)]
    claims_meeting_first(monkeypatch, len(relays))

    async def drain(relay: Relay) -> int:
        total = 0
        while moved := await relay.run_once():
            total += moved
        return total

    try:
        handed = await asyncio.gather(*(drain(r) for r in relays))
        assert sum(handed) == len(ids) == 300, handed
        assert all(n > 0 for n in handed), f"both relays took part: {handed}"
        assert statuses(own_db) == {"processing": 300}
        for deal in deals:
            received = await signalled_event_ids(client, deal)
            assert len(received) == 10 and len(set(received)) == 10, (deal, received)
    finally:
        await terminate(client, deals)


async def test_the_claim_of_a_relay_that_died_expires(
    dev_env: WorkflowEnvironment, own_db: Database, run_worker
) -> None:  # type: ignore[no-untyped-def]
    client = dev_env.client
    pipeline = plain_pipeline(own_db)
    deal = f"deal_{uuid.uuid4().hex[:10]}"
    (event_id,) = accepted(
        own_db,
        [deal],
        per_deal=1,
        payload={"deal_id": deal, "pipeline_id": pipeline, "title": "T", "value": 5},
    )
    with own_db.session() as session:
        session.execute(text("UPDATE events SET type = 'deal.created'"))
        session.commit()
    # A relay claims the event and dies before handing it over.
    (claimed,) = claim(own_db, 10, datetime.now(UTC), CLAIM_LEASE)
    assert claimed["id"] == event_id
    row = event_row(own_db, event_id)
    assert row is not None and row.status == "queued" and row.queued_at is not None
    async with run_worker(client, own_db) as settings:
        relay = Relay(own_db, lambda: client, task_queue=settings.task_queue)
        assert await relay.run_once() == 0, "the claim holds while its lease runs"
        with own_db.session() as session:
            session.execute(
                text("UPDATE events SET queued_at = :t"),
                {"t": datetime.now(UTC) - CLAIM_LEASE - timedelta(seconds=1)},
            )
            session.commit()
        assert await relay.run_once() == 1, "another pass takes the expired claim over"
        for _ in range(200):
            row = event_row(own_db, event_id)
            assert row is not None
            if row.status not in ("queued", "processing"):
                break
            await asyncio.sleep(0.1)
        assert row.status == "processed", row.status
        assert row.attempts == 1
    await terminate(client, [deal])


async def test_what_temporal_does_not_take_goes_back_to_accepted(own_db: Database) -> None:
    # A Temporal address nothing listens on: every handoff fails as UNAVAILABLE.
    unreachable = await Client.connect(
        "127.0.0.1:1", lazy=True, data_converter=pydantic_data_converter
    )
    deals = [f"deal_{uuid.uuid4().hex[:10]}" for _ in range(3)]
    accepted(own_db, deals, per_deal=2)
    relay = Relay(own_db, lambda: unreachable, task_queue="nowhere")
    with pytest.raises(RuntimeError, match="not handed over"):
        await relay.run_once()
    assert statuses(own_db) == {"accepted": 6}, "released at once, nothing counted"
    with own_db.engine.connect() as conn:
        assert conn.execute(text("SELECT max(attempts) FROM events")).scalar_one() == 0


def test_concurrent_claims_never_take_one_event_twice(own_db: Database) -> None:
    """Eight claimers start each round together on the same oldest rows, as API processes
    woken by one burst would: every event is claimed by exactly one of them."""
    deals = [f"deal_{uuid.uuid4().hex[:10]}" for _ in range(20)]
    ids = accepted(own_db, deals, per_deal=30)
    claimers = 8
    barrier = threading.Barrier(claimers, timeout=30)
    taken: list[list[str]] = [[] for _ in range(claimers)]

    def claimer(n: int) -> None:
        while True:
            barrier.wait()
            rows = claim(own_db, 25, datetime.now(UTC), CLAIM_LEASE)
            taken[n].extend(r["id"] for r in rows)
            barrier.wait()  # everyone has claimed this round: is anything left?
            if statuses(own_db).get("accepted", 0) == 0:
                return

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [event_id for ids_of_one in taken for event_id in ids_of_one]
    assert Counter(claimed).most_common(1)[0][1] == 1, "an event was claimed twice"
    assert sorted(claimed) == sorted(ids)
    assert sum(1 for one in taken if one) > 1, "the claimers shared the work"
    assert statuses(own_db) == {"queued": len(ids)}
