"""``/v1/dead-letters``: events whose processing failed (not a business refusal), to inspect,
replay (one, or in bulk by filter through ``DeadLetterReplayWorkflow``) or discard with a
reason. Every action is audited with who and when; acting on an event that is not
dead-lettered is a 409."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from sqlmodel import select
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.events import (
    NotDeadLettered,
    ReplayFilter,
    attempts_of,
    discard,
    filtered,
    replay,
)
from api.auth import Admin, Ctx, Viewer
from api.pagination import Page, newest_first
from api.problems import ProblemError
from domain.text import NoControl, check_text
from store.models import AuditEntry, Event
from workflows.replay import ReplayInput, ReplayProgress

router = APIRouter(prefix="/v1/dead-letters", tags=["dead letters"])


class DeadLetterOut(BaseModel):
    event_id: str
    source_id: str
    delivery_id: str
    type: str
    status: str
    deal_id: str | None
    attempts: int
    replays: int
    last_error: str | None
    received_at: datetime
    dead_lettered_at: datetime | None


class AttemptOut(BaseModel):
    at: datetime
    kind: str
    error: str | None = None
    actor: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class DeadLetterDetail(DeadLetterOut):
    payload: dict[str, Any]
    history: list[AttemptOut]


class DiscardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000), NoControl]


class BulkReplayRequest(ReplayFilter):
    """The filter and the pace; a field it does not know is refused (a typo would otherwise
    widen the filter to every dead letter)."""

    model_config = ConfigDict(extra="forbid")
    batch: int = Field(100, ge=1, le=1000)
    pause_seconds: float = Field(1.0, ge=0, le=3600)

    @field_validator("source_id", "type", "deal_id", "error_contains")
    @classmethod
    def _no_control(cls, value: str | None) -> str | None:
        return check_text(value) if value is not None else None


class BulkReplayStarted(BaseModel):
    replay_id: str
    status: str


def _out(row: Event) -> DeadLetterOut:
    return DeadLetterOut(
        event_id=row.id,
        source_id=row.source_id,
        delivery_id=row.delivery_id,
        type=row.type,
        status=row.status,
        deal_id=row.deal_id,
        attempts=row.attempts,
        replays=row.replays,
        last_error=row.last_error,
        received_at=row.received_at,
        dead_lettered_at=row.processed_at,
    )


def _detail(ctx: Any, row: Event) -> DeadLetterDetail:
    history = [
        AttemptOut(at=a.at, kind=a.kind, error=a.error, actor=a.actor, data=a.data)
        for a in attempts_of(ctx.db, row.id)
    ]
    return DeadLetterDetail(**_out(row).model_dump(), payload=row.payload, history=history)


def _conflict(exc: NotDeadLettered) -> ProblemError:
    if exc.status is None:
        return ProblemError(404, f"no event {exc.event_id}")
    return ProblemError(
        409, f"event {exc.event_id} is not dead-lettered (its status is '{exc.status}')"
    )


@router.get("", response_model=Page[DeadLetterOut])
def index(
    ctx: Ctx,
    _: Viewer,
    source_id: str | None = None,
    type: str | None = None,
    deal_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: str | None = None,
) -> Page[DeadLetterOut]:
    query = filtered(select(Event), ReplayFilter(source_id=source_id, type=type, deal_id=deal_id))
    return newest_first(
        ctx.db, query, Event.id, limit=limit, starting_after=starting_after, render=_out
    )


@router.post("/replay", status_code=202, response_model=BulkReplayStarted)
async def replay_many(body: BulkReplayRequest, ctx: Ctx, who: Admin) -> BulkReplayStarted:
    """Replay every dead letter matching the filter, in throttled batches (a Temporal
    workflow ``replay-{uuid}``; follow it with ``GET /v1/dead-letters/replays/{replay_id}``)."""
    client = ctx.client()
    replay_id = f"replay-{uuid.uuid4()}"
    flt = ReplayFilter(**body.model_dump(include=set(ReplayFilter.model_fields)))
    await client.start_workflow(
        "DeadLetterReplayWorkflow",
        ReplayInput(
            filter=flt, actor=who.subject, batch=body.batch, pause_seconds=body.pause_seconds
        ),
        id=replay_id,
        task_queue=ctx.settings.task_queue,
        static_summary=f"Replay of dead letters by {who.subject}",
    )

    def audit() -> None:
        with ctx.db.session() as session:
            session.add(
                AuditEntry(
                    at=datetime.now(UTC),
                    actor=who.subject,
                    action="dead_letter.bulk_replay",
                    target=replay_id,
                    data=body.model_dump(mode="json"),
                )
            )
            session.commit()

    await asyncio.to_thread(audit)
    return BulkReplayStarted(replay_id=replay_id, status="running")


@router.get("/replays/{replay_id}", response_model=ReplayProgress)
async def replay_progress(replay_id: str, ctx: Ctx, _: Viewer) -> ReplayProgress:
    if not replay_id.startswith("replay-"):
        raise ProblemError(404, f"no replay {replay_id}")
    handle = ctx.client().get_workflow_handle(replay_id, result_type=ReplayProgress)
    try:
        desc = await handle.describe()
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            return await handle.result()
        if desc.status != WorkflowExecutionStatus.RUNNING:
            raise ProblemError(409, f"replay {replay_id} ended as {desc.status.name.lower()}")
        return await handle.query("progress", result_type=ReplayProgress)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise ProblemError(404, f"no replay {replay_id}") from None
        raise


@router.get("/{event_id}", response_model=DeadLetterDetail)
def show(event_id: str, ctx: Ctx, _: Viewer) -> DeadLetterDetail:
    """The event with its payload, last error and its whole attempt history."""
    with ctx.db.session() as session:
        row = session.get(Event, event_id)
    if row is None:
        raise ProblemError(404, f"no event {event_id}")
    return _detail(ctx, row)


@router.post("/{event_id}/replay", response_model=DeadLetterDetail)
async def replay_one(event_id: str, ctx: Ctx, who: Admin) -> DeadLetterDetail:
    """Back to ``accepted``: the relay hands it to its deal workflow again, which applies it
    once more (exactly once, though it has seen that event id before)."""
    try:
        row = await asyncio.to_thread(replay, ctx.db, event_id, who.subject)
    except NotDeadLettered as exc:
        raise _conflict(exc) from None
    if ctx.relay is not None:
        ctx.relay.nudge()
    return await asyncio.to_thread(_detail, ctx, row)


@router.post("/{event_id}/discard", response_model=DeadLetterDetail)
def discard_one(event_id: str, body: DiscardRequest, ctx: Ctx, who: Admin) -> DeadLetterDetail:
    try:
        row = discard(ctx.db, event_id, who.subject, body.reason)
    except NotDeadLettered as exc:
        raise _conflict(exc) from None
    return _detail(ctx, row)
