"""Deal workflows on the real dev server: search attributes operators filter by, and a deal
that receives 20,000 events and passes through continue-as-new."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import func, text
from sqlmodel import select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.repair import recorded, restore_history
from domain.deal import Actor
from store.db import Database
from store.models import DealHistory
from tests.workflows.support import (
    create_pipeline,
    created,
    deal_row,
    event,
    eventually,
    new_id,
    send,
)
from workflows.messages import EventBatch, TransitionReply, TransitionRequest

pytestmark = pytest.mark.usefixtures("with_upserts")

SPEC = {
    "stages": [
        {"key": "lead", "name": "Lead", "probability": 10},
        {"key": "proposal", "name": "Proposal", "probability": 60, "rotting": "PT2S"},
        {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
    ]
}


async def listed(client: Client, query: str) -> set[str]:
    return {wf.id async for wf in client.list_workflows(query)}


async def eventually_listed(client: Client, query: str, workflow_id: str) -> None:
    for _ in range(300):  # visibility is eventually consistent
        if workflow_id in await listed(client, query):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{workflow_id} not found by {query!r}")


async def test_operators_find_deals_by_stage_and_rotting(
    dev_env: WorkflowEnvironment, sqlite_db: Database, task_queue: str, run_worker
) -> None:
    client, db = dev_env.client, sqlite_db
    pipeline = create_pipeline(db, SPEC)
    deal, other = new_id("deal"), new_id("deal")
    async with run_worker(client, db):
        handle = await send(client, task_queue, deal, [created(deal, pipeline)])
        await send(client, task_queue, other, [created(other, pipeline)])
        await eventually(lambda: deal_row(db, deal) and deal_row(db, other), "the deals")
        await eventually_listed(client, f'DealId="{other}" AND DealStage="lead"', f"deal-{other}")

        reply = await handle.execute_update(
            "transition",
            TransitionRequest(to_stage="proposal", actor=Actor(subject="uma")),
            result_type=TransitionReply,
        )
        assert reply.outcome == "moved"
        scoped = f'PipelineId="{pipeline}" AND DealStatus="open" AND '
        await eventually_listed(
            client, scoped + 'DealStage="proposal" AND IsRotting=false', f"deal-{deal}"
        )
        # two seconds later the deal rots (real time on this server)
        await eventually_listed(
            client, scoped + 'DealStage="proposal" AND IsRotting=true', f"deal-{deal}"
        )
        assert await listed(client, scoped + 'DealStage="proposal"') == {f"deal-{deal}"}
        assert await listed(client, scoped + 'DealStage="lead"') == {f"deal-{other}"}
        assert deal_row(db, deal).is_rotting


async def scheduled_activities(handle) -> list[str]:  # type: ignore[no-untyped-def]
    names = []
    async for ev in handle.fetch_history_events():
        if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            names.append(ev.activity_task_scheduled_event_attributes.activity_type.name)
    return names


async def test_a_new_deal_costs_one_read_and_one_write(
    dev_env: WorkflowEnvironment, sqlite_db: Database, task_queue: str, run_worker
) -> None:
    """The deal and its pipeline are read by one activity (the Temporal actions of a new deal
    are the ceiling of processing); an unknown pipeline still dead-letters the creation."""
    client, db = dev_env.client, sqlite_db
    pipeline = create_pipeline(db, SPEC)
    deal, orphan = new_id("deal"), new_id("deal")
    async with run_worker(client, db):
        handle = await send(client, task_queue, deal, [created(deal, pipeline)])
        lost = created(orphan, "pl_does_not_exist")
        orphan_handle = await send(client, task_queue, orphan, [lost])
        await eventually(lambda: deal_row(db, deal), "the deal")
        assert await scheduled_activities(handle) == ["load_deal_context", "record_deal"]
        assert await orphan_handle.result() == "no deal"
        assert await scheduled_activities(orphan_handle) == [
            "load_deal_context",
            "dead_letter_events",
        ]


TOTAL = 20_000
BATCH = 500


def count_history(db: Database, deal: str) -> dict[str, int]:
    with db.session() as session:
        rows = session.exec(
            select(DealHistory.kind, func.count())
            .where(DealHistory.deal_id == deal)
            .group_by(DealHistory.kind)
        ).all()
    return dict(rows)


@pytest.mark.slow
async def test_twenty_thousand_events_pass_through_continue_as_new(
    dev_env: WorkflowEnvironment, sqlite_db: Database, task_queue: str, run_worker
) -> None:
    client, db = dev_env.client, sqlite_db
    pipeline = create_pipeline(db, SPEC)
    deal = new_id("big")
    started = time.monotonic()
    async with run_worker(client, db):
        handle = await send(client, task_queue, deal, [created(deal, pipeline)])
        first_run = handle.first_execution_run_id or handle.result_run_id
        sent: list = []
        for start in range(0, TOTAL, BATCH):
            batch = []
            for i in range(start, start + BATCH):
                eid = f"{deal}-e{i}"
                if i % 2:
                    batch.append(event(deal, "deal.activity", eid, kind="call"))
                else:
                    batch.append(event(deal, "deal.updated", eid, fields={"n": i}, value=i))
            # the relay may send events again (a crash before it marked them queued)
            duplicates = sent[-BATCH:][::7]
            sent.extend(batch)
            await handle.signal("events", EventBatch(events=batch + duplicates))
        await handle.signal("events", EventBatch(events=sent[-BATCH:]))  # a whole batch again

        def all_applied() -> dict[str, int] | None:
            counts = count_history(db, deal)
            done = counts.get("activity", 0) + counts.get("deal_updated", 0) >= TOTAL
            return counts if done else None

        counts = await eventually(all_applied, "20,000 events applied", tries=20_000)
        elapsed = time.monotonic() - started
        state = await handle.query("state")
        latest = await client.get_workflow_handle(f"deal-{deal}").describe()

    assert counts["activity"] == TOTAL // 2
    assert counts["deal_updated"] == TOTAL // 2
    assert sum(counts.values()) == TOTAL + 1  # and deal_created: nothing applied twice
    row = deal_row(db, deal)
    assert row.fields == {"n": TOTAL - 2}
    assert row.value == TOTAL - 2
    assert state["deal"]["fields"] == {"n": TOTAL - 2}
    assert state["history_seq"] == TOTAL + 1
    with db.session() as session:
        seqs = session.exec(select(DealHistory.seq).where(DealHistory.deal_id == deal)).all()
    assert sorted(seqs) == list(range(1, TOTAL + 2))
    assert latest.run_id != first_run, "no continue-as-new happened"
    runs = [wf async for wf in client.list_workflows(f'WorkflowId="deal-{deal}"')]
    print(f"\n20,000 events: {elapsed:.1f} s, {len(runs)} runs")
    assert len(runs) >= 2
    # History the table lost comes back from the records of every run (reconciliation).
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM deal_history WHERE deal_id = :d"), {"d": deal})
    found = await recorded(client, deal)
    assert found.runs == len(runs)
    assert restore_history(db, deal, found) == TOTAL + 1
