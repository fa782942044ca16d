"""``/v1/deals``: the read model of each deal, its history and tasks, and moving it."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator
from sqlmodel import select
from starlette.responses import Response
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from api.auth import Admin, Ctx, Principal, Viewer, authenticate
from api.pagination import Page
from api.problems import ProblemError
from api.temporal_errors import problem_from
from domain.deal import Actor
from domain.text import NoControlAtAll, NulFreeJson
from store import links
from store.models import Deal, DealHistory, DealLink, Task
from workflows.messages import (
    SnoozeRequest,
    TransitionReply,
    TransitionRequest,
    deal_workflow_id,
)

router = APIRouter(prefix="/v1/deals", tags=["deals"])


class TransitionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to_stage: Annotated[str, StringConstraints(min_length=1, max_length=64), NoControlAtAll]
    fields: Annotated[dict[str, Any], NulFreeJson] = Field(default_factory=dict)


class SnoozeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    until: AwareDatetime
    """RFC 3339 with an offset (``Z`` or ``+02:00``); kept in UTC."""

    @field_validator("until")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)


def deal_view(row: Deal, external_ids: dict[str, str]) -> dict[str, Any]:
    sla = None
    if row.sla:
        sla = {
            "due_at": row.sla["due_at"],
            "warn_at": row.sla["warn_at"],
            "state": row.sla["state"],
        }
    return {
        "deal_id": row.deal_id,
        "pipeline_id": row.pipeline_id,
        "pipeline_version": row.pipeline_version,
        "title": row.title,
        "stage": row.stage,
        "stage_entered_at": row.stage_entered_at.isoformat(),
        "status": row.status,
        "value": row.value,
        "currency": row.currency,
        "owner": row.owner,
        "fields": row.fields,
        "is_rotting": row.is_rotting,
        "sla": sla,
        "pending_approval": row.pending_approval,
        "external_ids": external_ids,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "revision": row.revision,
    }


def etag_of(row: Deal, external_ids: dict[str, str]) -> str:
    """Changes with the deal's revision and with its links (written by the ingress, not the
    deal workflow, so they do not bump the revision)."""
    linked = orjson.dumps(external_ids, option=orjson.OPT_SORT_KEYS).decode()
    digest = hashlib.sha256(f"{row.deal_id}\0{row.revision}\0{linked}".encode()).hexdigest()
    return f'"{digest[:20]}"'


def none_match(header: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` matches ``etag`` (RFC 9110 13.1.2): ``*`` matches any current
    representation, and the comparison is weak (``W/"x"`` matches ``"x"``)."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == opaque for tag in header.split(","))


def _load(ctx: Ctx, deal_id: str) -> tuple[Deal, dict[str, str]]:
    """The deal's row and the external ids linked to it."""
    with ctx.db.session() as session:
        row = session.get(Deal, deal_id)
        if row is None:
            raise ProblemError(404, f"no deal {deal_id}")
        return row, links.of_deal(session.connection(), deal_id)


@router.get("", response_model=Page[dict[str, Any]])
def index(
    ctx: Ctx,
    _: Viewer,
    pipeline_id: str | None = None,
    stage: str | None = None,
    status: Literal["open", "won", "lost"] | None = None,
    owner: str | None = None,
    is_rotting: bool | None = None,
    external_id: Annotated[
        str | None,
        Query(
            description="``namespace:id``, e.g. ``stripe_customer:cus_123``: the deal linked "
            "to that external id",
            pattern=r"^[a-z][a-z0-9_.-]{0,63}:.+$",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: str | None = None,
) -> Page[dict[str, Any]]:
    query = select(Deal)
    for column, value in (
        (Deal.pipeline_id, pipeline_id),
        (Deal.stage, stage),
        (Deal.status, status),
        (Deal.owner, owner),
        (Deal.is_rotting, is_rotting),
    ):
        if value is not None:
            query = query.where(column == value)
    if external_id is not None:
        namespace, _, ext = external_id.partition(":")
        query = query.where(
            Deal.deal_id.in_(  # type: ignore[attr-defined]
                select(DealLink.deal_id).where(
                    DealLink.namespace == namespace, DealLink.external_id == ext
                )
            )
        )
    if starting_after:
        query = query.where(Deal.deal_id > starting_after)
    query = query.order_by(Deal.deal_id).limit(limit + 1)  # type: ignore[arg-type]
    with ctx.db.session() as session:
        rows = list(session.exec(query).all())
        more = len(rows) > limit
        rows = rows[:limit]
        linked = links.of_deals(session.connection(), [r.deal_id for r in rows])
    return Page[dict[str, Any]](
        data=[deal_view(r, linked.get(r.deal_id, {})) for r in rows],
        has_more=more,
        next_cursor=rows[-1].deal_id if more else None,
    )


@router.get("/{deal_id}")
def show(deal_id: str, request: Request, ctx: Ctx, _: Viewer) -> Response:
    row, external_ids = _load(ctx, deal_id)
    etag = etag_of(row, external_ids)
    if none_match(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag})
    return Response(
        orjson.dumps(deal_view(row, external_ids)),
        media_type="application/json",
        headers={"ETag": etag, "Cache-Control": "no-cache"},
    )


@router.get("/{deal_id}/history")
def history(
    deal_id: str,
    ctx: Ctx,
    _: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    after_seq: int = 0,
) -> dict[str, Any]:
    _load(ctx, deal_id)
    with ctx.db.session() as session:
        rows = session.exec(
            select(DealHistory)
            .where(DealHistory.deal_id == deal_id, DealHistory.seq > after_seq)
            .order_by(DealHistory.seq)  # type: ignore[arg-type]
            .limit(limit + 1)
        ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "data": [
            {"seq": r.seq, "at": r.at.isoformat(), "kind": r.kind, "data": r.data} for r in rows
        ],
        "has_more": more,
        "next_cursor": str(rows[-1].seq) if more else None,
    }


@router.get("/{deal_id}/tasks")
def tasks(deal_id: str, ctx: Ctx, _: Viewer) -> dict[str, Any]:
    _load(ctx, deal_id)
    with ctx.db.session() as session:
        rows = session.exec(
            select(Task).where(Task.deal_id == deal_id).order_by(Task.created_at)  # type: ignore[arg-type]
        ).all()
    return {
        "data": [
            {
                "id": r.id,
                "template": r.template,
                "title": r.title,
                "status": r.status,
                "due_at": r.due_at.isoformat() if r.due_at else None,
                "created_at": r.created_at.isoformat(),
            }
            for r in rows
        ]
    }


def _may_move(ctx: Ctx, principal: Principal, row: Deal) -> None:
    """Admins move any deal; other keys only when the pipeline's rules name their subject."""
    if principal.role == "admin":
        return
    from activities.deals import load_snapshot

    spec = load_snapshot(ctx.db, row.pipeline_id, row.pipeline_version).spec
    named = [r for r in (spec.rules.skip, spec.rules.backward) if isinstance(r, list)]
    if any(principal.subject in subjects for subjects in named):
        return
    raise ProblemError(
        403, f"'{principal.subject}' may not move deals of pipeline {row.pipeline_id}"
    )


@router.post(
    "/{deal_id}/transitions",
    responses={202: {"description": "held for approval"}, 409: {}, 422: {}},
)
async def transition(
    deal_id: str,
    body: TransitionBody,
    ctx: Ctx,
    principal: Annotated[Principal, Depends(authenticate)],
) -> Response:
    row, _ = await asyncio.to_thread(_load, ctx, deal_id)
    await asyncio.to_thread(_may_move, ctx, principal, row)
    handle = ctx.client().get_workflow_handle(deal_workflow_id(deal_id))
    request_body = TransitionRequest(
        to_stage=body.to_stage,
        fields=body.fields,
        actor=Actor(subject=principal.subject, role=principal.role),
    )
    try:
        reply = await handle.execute_update("transition", request_body, result_type=TransitionReply)
    except (WorkflowUpdateFailedError, RPCError) as exc:
        raise problem_from(exc, deal_id) from None
    if reply.outcome == "pending_approval":
        return Response(
            orjson.dumps({"approval_id": reply.approval_id, "status": "pending_approval"}),
            status_code=202,
            media_type="application/json",
        )
    row, external_ids = await asyncio.to_thread(_load, ctx, deal_id)
    return Response(
        orjson.dumps(deal_view(row, external_ids)),
        media_type="application/json",
        headers={"ETag": etag_of(row, external_ids)},
    )


@router.post("/{deal_id}/snooze")
async def snooze(deal_id: str, body: SnoozeBody, ctx: Ctx, principal: Admin) -> dict[str, Any]:
    await asyncio.to_thread(_load, ctx, deal_id)
    handle = ctx.client().get_workflow_handle(deal_workflow_id(deal_id))
    try:
        await handle.execute_update(
            "snooze",
            SnoozeRequest(until=body.until, actor=Actor(subject=principal.subject)),
            result_type=int,
        )
    except (WorkflowUpdateFailedError, RPCError) as exc:
        raise problem_from(exc, deal_id) from None
    return deal_view(*await asyncio.to_thread(_load, ctx, deal_id))
