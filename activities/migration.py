"""Activities of ``MigrationWorkflow``: select a batch, apply it, record the progress.

A deal whose workflow is running is moved by its ``migrate`` update (under the deal's lock, with
live events going on). A deal without a running workflow (closed deals: their workflow has
completed) is moved in the read model directly, through the same ``Engine.migrate``: its stored
state is what a later run of its workflow restores, so that run starts in the new place and knows
the migration id. Either way a second application of the same migration changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.deals import _write_deal, load_snapshot
from domain.engine import Engine, EngineState
from store.db import Database
from store.models import Deal, Migration
from workflows.messages import MigrateReply, MigrateRequest, RecordInput, deal_workflow_id
from workflows.migration import (
    ApplyBatchInput,
    ApplyBatchResult,
    DealOutcome,
    NextBatch,
    NextBatchInput,
    Progress,
    RecordMigrationInput,
)

log = logging.getLogger("dealflow.migration")

CONCURRENCY = 64
"""Updates in flight at once within a batch (the pacing usually keeps it far lower)."""
ATTEMPTS = 6
UPDATE_TIMEOUT = 60.0


class MigrationActivities:
    def __init__(self, db: Database, client: Client) -> None:
        self.db = db
        self.client = client

    # ------------------------------------------------------------------ progress and batches

    @activity.defn(name="migration_next_batch")
    def next_batch(self, inp: NextBatchInput) -> NextBatch:
        """Record the progress so far, then select the next deals after the cursor."""
        with self.db.session() as session:
            _write_progress(session, inp.migration_id, inp.status, inp.progress)
            query = select(Deal.deal_id).where(
                Deal.pipeline_id == inp.source_pipeline_id,
                Deal.created_at <= inp.created_before,
            )
            if inp.filter_stage is not None:
                query = query.where(Deal.stage == inp.filter_stage)
            if inp.filter_status is not None:
                query = query.where(Deal.status == inp.filter_status)
            if inp.progress.cursor is not None:
                query = query.where(col(Deal.deal_id) > inp.progress.cursor)
            ids = session.exec(query.order_by(col(Deal.deal_id)).limit(inp.batch_size)).all()
            session.commit()
        return NextBatch(deal_ids=list(ids))

    @activity.defn(name="migration_record")
    def record(self, inp: RecordMigrationInput) -> None:
        with self.db.session() as session:
            row = _write_progress(session, inp.migration_id, inp.status, inp.progress)
            if row is not None:
                if inp.finished_at is not None:
                    row.finished_at = inp.finished_at
                if inp.error is not None:
                    row.errors = [
                        *row.errors,
                        {"deal_id": None, "outcome": "failed", "reason": inp.error},
                    ]
                session.add(row)
            session.commit()

    # ------------------------------------------------------------------ applying a batch

    @activity.defn(name="migration_apply_batch")
    async def apply_batch(self, inp: ApplyBatchInput) -> ApplyBatchResult:
        snapshot = await asyncio.to_thread(
            load_snapshot, self.db, inp.target_pipeline_id, inp.target_version
        )
        request = MigrateRequest(
            migration_id=inp.migration_id,
            source_pipeline_id=inp.source_pipeline_id,
            pipeline=snapshot,
            stage_map=inp.stage_map,
            only_open=inp.only_open,
        )
        semaphore = asyncio.Semaphore(CONCURRENCY)
        interval = 1.0 / inp.rate_per_second
        start = time.monotonic()
        done = 0

        async def one(index: int, deal_id: str) -> DealOutcome:
            nonlocal done
            delay = start + index * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # paced at rate_per_second within the batch too
            async with semaphore:
                outcome = await self._migrate_one(deal_id, request)
            done += 1
            return outcome

        async def beat() -> None:
            while True:
                activity.heartbeat(done)
                await asyncio.sleep(1)

        beating = asyncio.create_task(beat())
        try:
            outcomes = await asyncio.gather(
                *(one(i, deal_id) for i, deal_id in enumerate(inp.deal_ids))
            )
        finally:
            beating.cancel()
        return ApplyBatchResult(outcomes=list(outcomes))

    async def _migrate_one(self, deal_id: str, request: MigrateRequest) -> DealOutcome:
        handle = self.client.get_workflow_handle(deal_workflow_id(deal_id))
        error = "unknown"
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
            try:
                reply = await asyncio.wait_for(
                    handle.execute_update("migrate", request, result_type=MigrateReply),
                    UPDATE_TIMEOUT,
                )
                return _outcome(deal_id, reply)
            except WorkflowUpdateFailedError as exc:
                cause = _application_error(exc)
                error = cause.message if cause is not None else str(exc)
                if cause is not None and cause.type == "not_found":
                    continue  # the deal's workflow is still loading it: try again
                return DealOutcome(deal_id=deal_id, outcome="failed", reason=error)
            except RPCError as exc:
                error = exc.message
                if exc.status != RPCStatusCode.NOT_FOUND:
                    continue
                if await self._running(handle):
                    continue  # it was handing over to a new run (continue-as-new)
                try:
                    return await asyncio.to_thread(self._migrate_row, deal_id, request)
                except _Conflict as conflict:
                    error = str(conflict)
                    continue
            except TimeoutError:
                error = f"no answer from the deal workflow within {UPDATE_TIMEOUT:.0f}s"
        return DealOutcome(deal_id=deal_id, outcome="failed", reason=error)

    async def _running(self, handle) -> bool:  # type: ignore[no-untyped-def]
        try:
            desc = await handle.describe()
        except RPCError:
            return False
        return desc.status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING

    def _migrate_row(self, deal_id: str, request: MigrateRequest) -> DealOutcome:
        """A deal without a running workflow: move its read-model row (and stored state)."""
        now = datetime.now(UTC)
        with self.db.session() as session:
            row = session.get(Deal, deal_id)
            if row is None or not row.state:
                return DealOutcome(
                    deal_id=deal_id, outcome="failed", reason="the deal has no stored state"
                )
            state = EngineState.model_validate(row.state)
            if request.migration_id in state.migrations:
                return DealOutcome(deal_id=deal_id, outcome="migrated")
            reply = request.skip_reason(state.deal)
            if reply is not None:
                return DealOutcome(deal_id=deal_id, outcome="skipped", reason=reply)
            engine = Engine(request.pipeline, state)
            to_stage = request.stage_map[state.deal.stage]
            engine.migrate(request.pipeline, to_stage, now, request.migration_id)
            _write_deal(session, RecordInput(state=engine.state, history=engine.history), now)
            # The row is written only if its revision is newer: read it back in the same
            # transaction, and keep nothing of the move (history, approvals) if it lost.
            session.refresh(row)
            if request.migration_id not in row.state.get("migrations", []):
                session.rollback()
                raise _Conflict(f"deal {deal_id} changed while it was being moved")
            session.commit()
        return DealOutcome(deal_id=deal_id, outcome="migrated")


class _Conflict(Exception):
    pass


def _outcome(deal_id: str, reply: MigrateReply) -> DealOutcome:
    if reply.outcome == "skipped":
        return DealOutcome(deal_id=deal_id, outcome="skipped", reason=reply.reason)
    # "already_migrated": an earlier attempt of this batch moved it (it was not counted then).
    return DealOutcome(deal_id=deal_id, outcome="migrated")


def _application_error(exc: BaseException) -> ApplicationError | None:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ApplicationError):
        cause = getattr(cause, "cause", None)
    return cause


def _write_progress(
    session: Session, migration_id: str, status: str, progress: Progress
) -> Migration | None:
    row = session.get(Migration, migration_id)
    if row is None:
        log.warning("migration %s has no row", migration_id)
        return None
    row.status = status
    row.total = progress.total
    row.migrated = progress.migrated
    row.skipped = progress.skipped
    row.failed = progress.failed
    row.cursor = progress.cursor
    row.errors = list(progress.errors)
    row.updated_at = datetime.now(UTC)
    session.add(row)
    return row
