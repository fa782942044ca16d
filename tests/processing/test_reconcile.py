"""Reconciliation: events stuck without an outcome go back to ``accepted``; a read model behind
its deal workflow is rewritten from the workflow's state; the report counts both. The schedule
is created once (idempotently)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from temporalio.client import ScheduleHandle
from temporalio.testing import WorkflowEnvironment

from activities.events import ReconcileInput, ReconcileReport
from store.db import Database
from store.models import Deal
from tests.processing.support import created, event_row, plain_pipeline, store_events
from tests.workflows.support import deal_row, event, eventually, history, new_id, send
from workflows.reconcile import SCHEDULE_ID, ensure_schedule


@pytest.fixture
def fresh_db(own_sqlite_db: Database) -> Database:
    """A database of its own: reconciliation looks at every deal and event in it."""
    return own_sqlite_db


async def test_reconcile_requeues_stuck_events_and_repairs_lagging_deals(
    dev_env: WorkflowEnvironment, fresh_db: Database, run_worker
) -> None:
    db, client = fresh_db, dev_env.client
    async with run_worker(client, db) as settings:
        pipeline = plain_pipeline(db)
        deal = new_id("deal")
        first = created(deal, pipeline)
        store_events(db, [first])
        await send(client, settings.task_queue, deal, [first])
        row = await eventually(lambda: deal_row(db, deal), "the deal row")
        revision = row.revision
        # A lost outcome (stuck queued for an hour) and a read model one revision behind.
        stuck = created(new_id("deal"), pipeline)
        store_events(db, [stuck])
        with db.engine.begin() as conn:
            conn.execute(
                text("UPDATE events SET queued_at = :t WHERE id = :i"),
                {"t": datetime.now(UTC) - timedelta(hours=1), "i": stuck.event_id},
            )
            conn.execute(
                text("UPDATE deals SET revision = :r WHERE deal_id = :d"),
                {"r": revision - 1, "d": deal},
            )
        report: ReconcileReport = await client.execute_workflow(
            "ReconcileWorkflow",
            ReconcileInput(stuck_after_seconds=600),
            id=f"reconcile-{uuid.uuid4().hex[:8]}",
            task_queue=settings.task_queue,
            result_type=ReconcileReport,
        )
        assert report.requeued == 1 and report.requeued_ids == [stuck.event_id]
        assert report.deals_checked == 1 and report.deals_behind == 1
        assert report.deals_repaired == [deal]
        assert event_row(db, stuck.event_id).status == "accepted"  # type: ignore[union-attr]
        assert deal_row(db, deal).revision == revision  # type: ignore[union-attr]
        again: ReconcileReport = await client.execute_workflow(
            "ReconcileWorkflow",
            ReconcileInput(stuck_after_seconds=600),
            id=f"reconcile-{uuid.uuid4().hex[:8]}",
            task_queue=settings.task_queue,
            result_type=ReconcileReport,
        )
        assert again.requeued == 0 and again.deals_behind == 0


async def test_the_schedule_is_created_once(dev_env: WorkflowEnvironment) -> None:
    from dealflow.settings import Settings

    settings = Settings(_env_file=None, task_queue=f"sched-{uuid.uuid4().hex[:6]}")  # type: ignore[call-arg]
    client = dev_env.client
    handle: ScheduleHandle = client.get_schedule_handle(SCHEDULE_ID)
    try:
        await handle.delete()
    except Exception:
        pass
    try:
        assert await ensure_schedule(client, settings) is True
        assert await ensure_schedule(client, settings) is False  # already exists: fine
        desc = await handle.describe()
        [interval] = desc.schedule.spec.intervals
        assert interval.every == timedelta(minutes=5)
        assert desc.schedule.action.workflow == "ReconcileWorkflow"  # type: ignore[attr-defined]
    finally:
        await handle.delete()


async def reconcile(client, task_queue: str) -> ReconcileReport:  # type: ignore[no-untyped-def]
    return await client.execute_workflow(
        "ReconcileWorkflow",
        ReconcileInput(stuck_after_seconds=600),
        id=f"reconcile-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
        result_type=ReconcileReport,
    )


async def test_lost_writes_come_back_from_the_workflows_records(
    dev_env: WorkflowEnvironment, own_db: Database, run_worker
) -> None:  # type: ignore[no-untyped-def]
    """The database loses what a deal workflow wrote (a restore from an older backup): an
    applied event's outcome and some history entries. Re-queueing the event would not help (the
    workflow drops an id it has seen); reconciliation writes both again from the workflow's
    history, and says which deal's entries it cannot find any more."""
    db, client = own_db, dev_env.client
    async with run_worker(client, db) as settings:
        pipeline = plain_pipeline(db)
        deal, other = new_id("deal"), new_id("deal")
        first = created(deal, pipeline)
        moves = [
            event(deal, "deal.updated", value=7000),
            event(deal, "deal.stage_change_requested", to_stage="qualified"),
            event(deal, "deal.activity", kind="call"),
        ]
        store_events(db, [first, *moves])
        await send(client, settings.task_queue, deal, [first])
        await send(client, settings.task_queue, deal, moves)
        await eventually(
            lambda: all(
                (row := event_row(db, e.event_id)) is not None and row.status == "processed"
                for e in [first, *moves]
            ),
            "every event processed",
        )
        before = [(h.seq, h.kind) for h in history(db, deal)]
        assert len(before) >= 3, before
        lost = moves[1].event_id
        other_created = created(other, pipeline)
        store_events(db, [other_created])
        await send(client, settings.task_queue, other, [other_created])
        await eventually(lambda: deal_row(db, other), "the other deal")
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE events SET status = 'processing', processed_at = NULL, "
                    "queued_at = :t WHERE id = :i"
                ),
                {"t": datetime.now(UTC) - timedelta(hours=1), "i": lost},
            )
            conn.execute(
                text("DELETE FROM deal_history WHERE deal_id = :d AND seq > 1"), {"d": deal}
            )
        # The other deal claims three entries more than its workflow ever recorded.
        with db.session() as session:
            row = session.get(Deal, other)
            assert row is not None
            seq = int(row.state["history_seq"])
            row.state = {**row.state, "history_seq": seq + 3}
            session.add(row)
            session.commit()

        report = await reconcile(client, settings.task_queue)
        assert report.outcomes_recovered == 1 and report.recovered_ids == [lost]
        assert report.requeued == 0, "an applied event is not sent again"
        recovered = event_row(db, lost)
        assert recovered is not None and recovered.status == "processed"
        assert report.history_restored == len(before) - 1
        assert report.history_repaired == [deal]
        assert [(h.seq, h.kind) for h in history(db, deal)] == before
        assert report.history_unrecoverable == [other]

        again = await reconcile(client, settings.task_queue)
        assert again.outcomes_recovered == 0 and again.history_restored == 0
        assert again.requeued == 0


async def test_an_old_row_behind_its_workflow_is_found_among_many(
    dev_env: WorkflowEnvironment, own_db: Database, run_worker
) -> None:  # type: ignore[no-untyped-def]
    """Each run queries a bounded sample of open deals; the one whose last write was lost is
    the one updated longest ago, and it is still found (a sample, not the newest rows)."""
    db, client = own_db, dev_env.client
    async with run_worker(client, db) as settings:
        pipeline = plain_pipeline(db)
        deals = [new_id("deal") for _ in range(6)]
        for deal in deals:
            first = created(deal, pipeline)
            store_events(db, [first])
            await send(client, settings.task_queue, deal, [first])
            await eventually(lambda d=deal: deal_row(db, d), "the deal row")
        behind = deals[0]
        revision = deal_row(db, behind).revision  # type: ignore[union-attr]
        with db.engine.begin() as conn:
            conn.execute(
                text("UPDATE deals SET revision = :r, updated_at = :t WHERE deal_id = :d"),
                {"r": revision - 1, "t": datetime.now(UTC) - timedelta(days=30), "d": behind},
            )
        found: list[str] = []
        for _ in range(40):
            report: ReconcileReport = await client.execute_workflow(
                "ReconcileWorkflow",
                ReconcileInput(stuck_after_seconds=600, query_limit=2),
                id=f"reconcile-{uuid.uuid4().hex[:8]}",
                task_queue=settings.task_queue,
                result_type=ReconcileReport,
            )
            assert report.deals_checked == 2
            found.extend(report.deals_repaired)
            if found:
                break
        assert found == [behind]
        assert deal_row(db, behind).revision == revision  # type: ignore[union-attr]
