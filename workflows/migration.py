"""``migration-{id}``: a bulk move of existing deals to another pipeline or version.

The workflow walks the source pipeline's deals in ``deal_id`` order, one batch at a time after a
cursor: an activity records the progress so far and selects the next batch from the read model,
another applies the batch through each deal workflow's ``migrate`` update (the deal's own lock and
rules, so live events keep flowing). Batches are throttled to ``rate_per_second``. Signals pause,
resume and cancel it between batches; a query shows the progress. Every ``batches_per_run``
batches it continues as new, carrying the cursor and the counters.

A crash anywhere is harmless: a batch whose activity did not finish is applied again, and each
deal remembers the migration ids applied to it, so a second application changes nothing (and is
counted as migrated, once: the counters only grow when a batch's activity completes).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from workflows.retries import DB_RETRY, cause_message

MAX_ERRORS = 100
"""Per-deal failures and skips kept with the migration (the counters count them all)."""

Status = Literal["running", "paused", "completed", "cancelled", "failed"]


def migration_workflow_id(migration_id: str) -> str:
    return f"migration-{migration_id}"


class Progress(BaseModel):
    total: int = 0
    migrated: int = 0
    skipped: int = 0
    failed: int = 0
    cursor: str | None = None
    errors: list[dict[str, Any]] = Field(default_factory=list)


class MigrationInput(BaseModel):
    migration_id: str
    source_pipeline_id: str
    target_pipeline_id: str
    target_version: int
    stage_map: dict[str, str]
    filter_stage: str | None = None
    filter_status: str | None = None
    created_before: datetime
    """Only deals that existed when the migration started are moved (``total`` is theirs)."""
    batch_size: int = 100
    rate_per_second: float = 50
    batches_per_run: int = 20
    progress: Progress = Field(default_factory=Progress)
    paused: bool = False
    cancelled: bool = False


class NextBatchInput(BaseModel):
    migration_id: str
    source_pipeline_id: str
    filter_stage: str | None = None
    filter_status: str | None = None
    created_before: datetime
    batch_size: int
    progress: Progress
    status: Status = "running"


class NextBatch(BaseModel):
    deal_ids: list[str]


class ApplyBatchInput(BaseModel):
    migration_id: str
    source_pipeline_id: str
    target_pipeline_id: str
    target_version: int
    stage_map: dict[str, str]
    only_open: bool = False
    deal_ids: list[str]
    rate_per_second: float


class DealOutcome(BaseModel):
    deal_id: str
    outcome: Literal["migrated", "skipped", "failed"]
    reason: str | None = None


class ApplyBatchResult(BaseModel):
    outcomes: list[DealOutcome]


class RecordMigrationInput(BaseModel):
    migration_id: str
    status: Status
    progress: Progress
    finished_at: datetime | None = None
    error: str | None = None


@workflow.defn(name="MigrationWorkflow")
class MigrationWorkflow:
    @workflow.init
    def __init__(self, inp: MigrationInput) -> None:
        self.inp = inp
        self.progress = inp.progress.model_copy(deep=True)
        self.paused = inp.paused
        self.cancelled = inp.cancelled
        self.status: Status = "paused" if inp.paused else "running"

    @workflow.run
    async def run(self, inp: MigrationInput) -> str:
        try:
            return await self._run(inp)
        except ActivityError as exc:
            error = cause_message(exc)
            workflow.logger.error("migration %s failed: %s", inp.migration_id, error)
            self.status = "failed"
            await self._record(finished=True, error=error)
            return "failed"

    async def _run(self, inp: MigrationInput) -> str:
        batches = 0
        while True:
            if self.paused and not self.cancelled:
                self.status = "paused"
                await self._record()
                await workflow.wait_condition(lambda: not self.paused or self.cancelled)
            if self.cancelled:
                break
            self.status = "running"
            started = workflow.now()
            batch: NextBatch = await workflow.execute_activity(
                "migration_next_batch",
                NextBatchInput(
                    migration_id=inp.migration_id,
                    source_pipeline_id=inp.source_pipeline_id,
                    filter_stage=inp.filter_stage,
                    filter_status=inp.filter_status,
                    created_before=inp.created_before,
                    batch_size=inp.batch_size,
                    progress=self.progress,
                    status="running",
                ),
                result_type=NextBatch,
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=DB_RETRY,
            )
            if not batch.deal_ids:
                break
            paced = len(batch.deal_ids) / inp.rate_per_second
            result: ApplyBatchResult = await workflow.execute_activity(
                "migration_apply_batch",
                ApplyBatchInput(
                    migration_id=inp.migration_id,
                    source_pipeline_id=inp.source_pipeline_id,
                    target_pipeline_id=inp.target_pipeline_id,
                    target_version=inp.target_version,
                    stage_map=inp.stage_map,
                    only_open=inp.filter_status == "open",
                    deal_ids=batch.deal_ids,
                    rate_per_second=inp.rate_per_second,
                ),
                result_type=ApplyBatchResult,
                start_to_close_timeout=timedelta(seconds=paced * 2 + 300),
                heartbeat_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=1),
                    backoff_coefficient=2.0,
                    maximum_interval=timedelta(seconds=30),
                ),
            )
            self._count(result)
            self.progress.cursor = batch.deal_ids[-1]
            batches += 1
            # The throttle: a batch takes at least len(batch) / rate seconds, all told.
            rest = timedelta(seconds=paced) - (workflow.now() - started)
            if rest > timedelta(0):
                try:
                    await workflow.wait_condition(lambda: self.cancelled, timeout=rest)
                except TimeoutError:
                    pass
            if batches >= inp.batches_per_run or workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._carry())
        self.status = "cancelled" if self.cancelled else "completed"
        if not self.cancelled:
            # Deals that left the filter while the migration ran were never selected.
            done = self.progress.migrated + self.progress.skipped + self.progress.failed
            self.progress.total = done
        await self._record(finished=True)
        return self.status

    def _count(self, result: ApplyBatchResult) -> None:
        progress = self.progress
        for item in result.outcomes:
            if item.outcome == "migrated":
                progress.migrated += 1
                continue
            if item.outcome == "skipped":
                progress.skipped += 1
            else:
                progress.failed += 1
            if len(progress.errors) < MAX_ERRORS:
                progress.errors.append(
                    {"deal_id": item.deal_id, "outcome": item.outcome, "reason": item.reason}
                )

    def _carry(self) -> MigrationInput:
        return self.inp.model_copy(
            update={
                "progress": self.progress,
                "paused": self.paused,
                "cancelled": self.cancelled,
            }
        )

    async def _record(self, *, finished: bool = False, error: str | None = None) -> None:
        await workflow.execute_activity(
            "migration_record",
            RecordMigrationInput(
                migration_id=self.inp.migration_id,
                status=self.status,
                progress=self.progress,
                finished_at=workflow.now() if finished else None,
                error=error,
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY,
        )

    @workflow.signal
    def pause(self) -> None:
        self.paused = True

    @workflow.signal
    def resume(self) -> None:
        self.paused = False

    @workflow.signal
    def cancel(self) -> None:
        self.cancelled = True

    @workflow.query(name="progress")
    def current_progress(self) -> dict[str, Any]:
        return {"status": self.status, "paused": self.paused, **self.progress.model_dump()}
