"""``/v1/approvals``: moves waiting for people, and their decisions."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, StringConstraints
from sqlmodel import select
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from api.auth import Approver, Ctx
from api.problems import ProblemError
from api.temporal_errors import problem_from
from domain.text import NoControl
from store.models import Approval
from workflows.messages import DecisionReply, DecisionRequest, deal_workflow_id

router = APIRouter(prefix="/v1/approvals", tags=["approvals"])


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "reject"]
    comment: Annotated[str, StringConstraints(max_length=2000), NoControl] | None = None


def approval_out(row: Approval) -> dict[str, Any]:
    return {
        "approval_id": row.id,
        "deal_id": row.deal_id,
        "from_stage": row.from_stage,
        "to_stage": row.to_stage,
        "approvers": row.approvers,
        "mode": row.mode,
        "status": row.status,
        "decisions": row.decisions,
        "requested_by": row.requested_by,
        "requested_at": row.requested_at.isoformat(),
        "due_at": row.due_at.isoformat() if row.due_at else None,
        "decided_at": row.decided_at.isoformat() if row.decided_at else None,
    }


@router.get("")
def index(
    ctx: Ctx,
    principal: Approver,
    status: Literal["pending", "approved", "rejected", "withdrawn"] | None = None,
    deal_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    query = select(Approval)
    if status:
        query = query.where(Approval.status == status)
    if deal_id:
        query = query.where(Approval.deal_id == deal_id)
    query = query.order_by(Approval.requested_at.desc())  # type: ignore[attr-defined]
    with ctx.db.session() as session:
        rows = list(session.exec(query).all())
    if principal.role != "admin":
        rows = [r for r in rows if principal.subject in r.approvers]
    return {"data": [approval_out(r) for r in rows[:limit]], "has_more": len(rows) > limit}


@router.get("/{approval_id}")
def show(approval_id: str, ctx: Ctx, principal: Approver) -> dict[str, Any]:
    with ctx.db.session() as session:
        row = session.get(Approval, approval_id)
    if row is None or (principal.role != "admin" and principal.subject not in row.approvers):
        raise ProblemError(404, f"no approval {approval_id}")
    return approval_out(row)


@router.post("/{approval_id}/decision")
async def decide(
    approval_id: str, body: DecisionBody, ctx: Ctx, principal: Approver
) -> dict[str, Any]:
    def load() -> Approval | None:
        with ctx.db.session() as session:
            return session.get(Approval, approval_id)

    row = await asyncio.to_thread(load)
    if row is None:
        raise ProblemError(404, f"no approval {approval_id}")
    if principal.subject not in row.approvers:
        raise ProblemError(403, f"'{principal.subject}' is not an approver of {approval_id}")
    if row.status != "pending":
        raise ProblemError(409, f"approval {approval_id} is already {row.status}")
    handle = ctx.client().get_workflow_handle(deal_workflow_id(row.deal_id))
    try:
        reply = await handle.execute_update(
            "decide",
            DecisionRequest(
                approval_id=approval_id,
                subject=principal.subject,
                decision=body.decision,
                comment=body.comment,
            ),
            result_type=DecisionReply,
        )
    except (WorkflowUpdateFailedError, RPCError) as exc:
        raise problem_from(exc, row.deal_id) from None
    row = await asyncio.to_thread(load)
    assert row is not None
    return {**approval_out(row), "outcome": reply.outcome}
