"""A scheduled go-live is carried out by a Temporal timer (time-skipping server)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from dealflow.settings import Settings
from store.db import Database
from store.models import AuditEntry, Pipeline, PipelineVersion
from worker import build_worker
from workflows.golive import GoLiveInput, go_live_workflow_id


def _scheduled_pipeline(db: Database, go_live_at: datetime) -> str:
    pipeline_id = f"pl_golive_{uuid.uuid4().hex[:8]}"
    spec = {"name": "p", "stages": [{"key": "lead", "name": "Lead", "probability": 10}]}
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
    settings = Settings(task_queue=f"golive-{uuid.uuid4().hex[:6]}", metrics_port=0)
    async with build_worker(time_env.client, db, settings):
        handle = await time_env.client.start_workflow(
            "PipelineGoLiveWorkflow",
            GoLiveInput(pipeline_id=pipeline_id, version=1, go_live_at=go_live_at),
            id=go_live_workflow_id(pipeline_id),
            task_queue=settings.task_queue,
        )
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
    settings = Settings(task_queue=f"golive-{uuid.uuid4().hex[:6]}", metrics_port=0)
    async with build_worker(time_env.client, db, settings):
        handle = await time_env.client.start_workflow(
            "PipelineGoLiveWorkflow",
            GoLiveInput(pipeline_id=pipeline_id, version=1, go_live_at=first),
            id=go_live_workflow_id(pipeline_id),
            task_queue=settings.task_queue,
        )
        assert "schedule changed" in await handle.result()
    with db.session() as session:
        assert session.get(Pipeline, pipeline_id).status == "scheduled"  # type: ignore[union-attr]
