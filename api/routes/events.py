"""``/v1/events``: what happened to each accepted webhook."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlmodel import select

from api.auth import Ctx, Viewer
from api.pagination import Page, newest_first
from api.problems import ProblemError
from store.models import Event

router = APIRouter(prefix="/v1/events", tags=["events"])

Status = Literal[
    "accepted", "queued", "processing", "processed", "failed", "dead_lettered", "ignored"
]


class EventOut(BaseModel):
    event_id: str
    source_id: str
    delivery_id: str
    type: str
    status: str
    attempts: int
    last_error: str | None
    received_at: datetime
    processed_at: datetime | None
    deal_id: str | None


def event_out(row: Event) -> EventOut:
    return EventOut(
        event_id=row.id,
        source_id=row.source_id,
        delivery_id=row.delivery_id,
        type=row.type,
        status=row.status,
        attempts=row.attempts,
        last_error=row.last_error,
        received_at=row.received_at,
        processed_at=row.processed_at,
        deal_id=row.deal_id,
    )


@router.get("", response_model=Page[EventOut])
def index(
    ctx: Ctx,
    _: Viewer,
    status: Status | None = None,
    source_id: str | None = None,
    type: str | None = None,
    deal_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: str | None = None,
) -> Page[EventOut]:
    query = select(Event)
    if status:
        query = query.where(Event.status == status)
    if source_id:
        query = query.where(Event.source_id == source_id)
    if type:
        query = query.where(Event.type == type)
    if deal_id:
        query = query.where(Event.deal_id == deal_id)
    return newest_first(
        ctx.db, query, Event.id, limit=limit, starting_after=starting_after, render=event_out
    )


@router.get("/{event_id}", response_model=EventOut)
def show(event_id: str, ctx: Ctx, _: Viewer) -> EventOut:
    with ctx.db.session() as session:
        row = session.get(Event, event_id)
    if row is None:
        raise ProblemError(404, f"no event {event_id}")
    return event_out(row)
