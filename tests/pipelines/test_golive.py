"""A scheduled go-live is carried out by a Temporal timer (time-skipping server): the first
go-live of a pipeline, or a new version taking over from the live one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from sqlmodel import select
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment

from activities.deals import load_snapshot
from api.routes.pipelines import _cancel_go_live, _schedule_go_live
from dealflow.settings import Settings
from store.db import Database
from store.models import AuditEntry, Pipeline, PipelineVersion
from worker import build_worker
from workflows.golive import GoLiveInput, go_live_workflow_id


def _scheduled_pipeline(db: Database, go_live_at: datetime) -> str:
    pipeline_id = f"pl_golive_{uuid.uuid4().hex[:8]}"
    spec = {
        "name": "p",
        "type": "sales",
        "currency": "USD",
        "probability_mode": "stage",
        "stages": [{"key": "lead", "name": "Lead", "probability": 10}],
    }
    with db.session() as session:
        session.add(
            Pipeline(
                id=pipeline_id,
                name="p",
                status="scheduled",
                test_mode=True,
                go_live_at=go_live_at,
                active_version=1,
            )
        )
        session.add(PipelineVersion(pipeline_id=pipeline_id, version=1, spec=spec))
        session.commit()
    return pipeline_id


async def test_go_live_timer_makes_the_pipeline_active(
    time_env: WorkflowEnvironment, db: Database
) -> None:
    go_live_at = (datetime.now(UTC) + timedelta(days=7)).replace(microsecond=0)
    pipeline_id = _scheduled_pipeline(db, go_live_at)
    async with _go_live_timer(time_env, db, pipeline_id, 1, go_live_at) as handle:
        with db.session() as session:
            assert session.get(Pipeline, pipeline_id).status == "scheduled"  # type: ignore[union-attr]
        assert await handle.result() == "active"  # the server skips the seven days
    with db.session() as session:
        row = session.get(Pipeline, pipeline_id)
        assert row is not None and row.status == "active" and row.test_mode is False
        audit = session.exec(select(AuditEntry).where(AuditEntry.target == pipeline_id)).all()
    assert [a.actor for a in audit] == ["scheduler"]


async def test_a_rescheduled_go_live_leaves_the_pipeline_alone(
    time_env: WorkflowEnvironment, db: Database
) -> None:
    first = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    pipeline_id = _scheduled_pipeline(db, first + timedelta(days=30))  # moved since
    async with _go_live_timer(time_env, db, pipeline_id, 1, first) as handle:
        assert "schedule changed" in await handle.result()
    with db.session() as session:
        assert session.get(Pipeline, pipeline_id).status == "scheduled"  # type: ignore[union-attr]


def _live_pipeline_with_v2_scheduled(db: Database, go_live_at: datetime) -> str:
    """Live on v1 (active), v2 scheduled for ``go_live_at``: what ``activate`` stores."""
    pipeline_id = f"pl_golive_{uuid.uuid4().hex[:8]}"
    v1 = {
        "name": "p",
        "type": "sales",
        "currency": "USD",
        "probability_mode": "stage",
        "stages": [{"key": "lead", "name": "Lead", "probability": 10}],
    }
    v2 = {
        "name": "p",
        "type": "sales",
        "currency": "USD",
        "probability_mode": "stage",
        "stages": [*v1["stages"], {"key": "demo", "name": "Demo", "probability": 40}],
    }
    with db.session() as session:
        session.add(
            Pipeline(
                id=pipeline_id,
                name="p",
                status="active",
                current_version=2,
                active_version=1,
                scheduled_version=2,
                go_live_at=go_live_at,
            )
        )
        session.add(PipelineVersion(pipeline_id=pipeline_id, version=1, spec=v1))
        session.add(PipelineVersion(pipeline_id=pipeline_id, version=2, spec=v2))
        session.commit()
    return pipeline_id


async def test_go_live_timer_switches_a_live_pipeline_to_the_scheduled_version(
    time_env: WorkflowEnvironment, db: Database
) -> None:
    # The test server's clock may be ahead of ours (earlier tests skipped days).
    go_live_at = (await _server_now(time_env) + timedelta(days=7)).replace(microsecond=0)
    pipeline_id = _live_pipeline_with_v2_scheduled(db, go_live_at)
    assert load_snapshot(db, pipeline_id).version == 1  # v1 stays live until go-live
    async with _go_live_timer(time_env, db, pipeline_id, 2, go_live_at) as handle:
        with db.session() as session:
            row = session.get(Pipeline, pipeline_id)
            assert row is not None and (row.active_version, row.scheduled_version) == (1, 2)
        assert await handle.result() == "active"  # the server skips the seven days
    with db.session() as session:
        row = session.get(Pipeline, pipeline_id)
        assert row is not None
        assert (row.status, row.test_mode) == ("active", False)
        assert (row.active_version, row.scheduled_version) == (2, None)
        audit = session.exec(select(AuditEntry).where(AuditEntry.target == pipeline_id)).all()
    assert [(a.actor, a.data["version"], a.data["from_version"]) for a in audit] == [
        ("scheduler", 2, 1)
    ]
    # Recorded: v2 whatever the clock says (our clock is days behind the test server's).
    assert load_snapshot(db, pipeline_id).version == 2


async def test_a_dropped_version_schedule_leaves_the_live_version_alone(
    time_env: WorkflowEnvironment, db: Database
) -> None:
    go_live_at = (await _server_now(time_env) + timedelta(days=2)).replace(microsecond=0)
    pipeline_id = _live_pipeline_with_v2_scheduled(db, go_live_at)
    with db.session() as session:  # activated again at once on v2, schedule dropped
        row = session.get(Pipeline, pipeline_id)
        assert row is not None
        row.active_version, row.scheduled_version, row.go_live_at = 2, None, None
        session.add(row)
        session.commit()
    async with _go_live_timer(time_env, db, pipeline_id, 2, go_live_at) as handle:
        assert "schedule changed" in await handle.result()
    with db.session() as session:
        row = session.get(Pipeline, pipeline_id)
        assert row is not None and (row.active_version, row.scheduled_version) == (2, None)
        audit = session.exec(select(AuditEntry).where(AuditEntry.target == pipeline_id)).all()
    assert audit == []


async def test_activating_at_once_cancels_the_go_live_timer(
    time_env: WorkflowEnvironment, db: Database
) -> None:
    go_live_at = (await _server_now(time_env) + timedelta(days=3)).replace(microsecond=0)
    pipeline_id = _live_pipeline_with_v2_scheduled(db, go_live_at)
    settings = Settings(task_queue=f"golive-{uuid.uuid4().hex[:6]}", metrics_port=0)
    ctx = SimpleNamespace(temporal=time_env.client, settings=settings)
    async with build_worker(time_env.client, db, settings):
        await _schedule_go_live(ctx, pipeline_id, 2, go_live_at)
        await _cancel_go_live(ctx, pipeline_id)
        handle = time_env.client.get_workflow_handle(go_live_workflow_id(pipeline_id))
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
        assert isinstance(failed.value.cause, CancelledError)
        await _cancel_go_live(ctx, pipeline_id)  # finished already: nothing to do, no error
    with db.session() as session:
        row = session.get(Pipeline, pipeline_id)
        assert row is not None and (row.active_version, row.scheduled_version) == (1, 2)


@asynccontextmanager
async def _go_live_timer(
    env: WorkflowEnvironment, db: Database, pipeline_id: str, version: int, at: datetime
) -> AsyncIterator[WorkflowHandle]:
    """A worker, and the go-live timer of ``pipeline_id`` started on it (while the worker runs)."""
    settings = Settings(task_queue=f"golive-{uuid.uuid4().hex[:6]}", metrics_port=0)
    async with build_worker(env.client, db, settings):
        yield await env.client.start_workflow(
            "PipelineGoLiveWorkflow",
            GoLiveInput(pipeline_id=pipeline_id, version=version, go_live_at=at),
            id=go_live_workflow_id(pipeline_id),
            task_queue=settings.task_queue,
        )


async def _server_now(env: WorkflowEnvironment) -> datetime:
    """The time-skipping server's clock (ahead of ours once a test has skipped time)."""
    return max(await env.get_current_time(), datetime.now(UTC))
