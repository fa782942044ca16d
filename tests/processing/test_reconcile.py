"""Reconciliation: events stuck without an outcome go back to ``accepted``; a read model behind
its deal workflow is rewritten from the workflow's state; the report counts both. The schedule
is created once (idempotently)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from temporalio.client import ScheduleHandle
from temporalio.testing import WorkflowEnvironment

from activities.events import ReconcileInput, ReconcileReport
from store.db import Database
from store.migrate import upgrade
from tests.processing.support import created, event_row, plain_pipeline, store_events
from tests.workflows.support import deal_row, eventually, new_id, send
from workflows.reconcile import SCHEDULE_ID, ensure_schedule


@pytest.fixture
def fresh_db(tmp_path: Path) -> Iterator[Database]:
    """A database of its own: reconciliation looks at every deal and event in it."""
    url = f"sqlite:///{tmp_path / 'reconcile.db'}"
    upgrade(url)
    database = Database(url)
    yield database
    database.dispose()


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
