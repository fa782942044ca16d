"""``DeadLetterReplayWorkflow`` (id ``replay-{uuid}``): replays the dead letters matching a filter
in throttled batches; its progress is the ``progress`` query (and the workflow's result)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.events import ReplayBatchInput, ReplayBatchResult, ReplayFilter
    from activities.integrations import DB_WRITE_RETRY


class ReplayInput(BaseModel):
    filter: ReplayFilter = Field(default_factory=ReplayFilter)
    actor: str | None = None
    batch: int = Field(100, ge=1, le=1000)
    pause_seconds: float = Field(1.0, ge=0)


class ReplayProgress(BaseModel):
    replay_id: str
    status: str = "running"  # running | completed
    replayed: int = 0
    skipped: int = 0
    batches: int = 0
    limit: int | None = None
    last_event_id: str = ""
    started_at: str | None = None
    finished_at: str | None = None


@workflow.defn(name="DeadLetterReplayWorkflow")
class DeadLetterReplayWorkflow:
    @workflow.init
    def __init__(self, inp: ReplayInput) -> None:
        self.progress_ = ReplayProgress(
            replay_id=workflow.info().workflow_id, limit=inp.filter.limit
        )

    @workflow.run
    async def run(self, inp: ReplayInput) -> ReplayProgress:
        p = self.progress_
        p.started_at = workflow.now().isoformat()
        limit = inp.filter.limit
        while limit is None or p.replayed < limit:
            size = inp.batch if limit is None else min(inp.batch, limit - p.replayed)
            result: ReplayBatchResult = await workflow.execute_activity(
                "replay_dead_letters",
                ReplayBatchInput(
                    filter=inp.filter,
                    after=p.last_event_id,
                    batch=size,
                    actor=inp.actor,
                    replay_id=p.replay_id,
                ),
                result_type=ReplayBatchResult,
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=DB_WRITE_RETRY,
            )
            p.batches += 1
            p.replayed += len(result.replayed)
            p.skipped += result.skipped
            p.last_event_id = result.last_id
            if result.exhausted:
                break
            if inp.pause_seconds:
                await workflow.sleep(timedelta(seconds=inp.pause_seconds))  # the throttle
        p.status = "completed"
        p.finished_at = workflow.now().isoformat()
        return p

    @workflow.query
    def progress(self) -> ReplayProgress:
        return self.progress_
