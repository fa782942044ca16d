"""The state of one deal, as its workflow holds it and the read model shows it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(Model):
    """One thing wrong with a request; a list of these becomes the ``errors`` of a problem doc."""

    code: str
    loc: list[str | int] = Field(default_factory=list)
    msg: str


class Actor(Model):
    """Who asks for something: an API key's subject and role, or the engine itself."""

    subject: str | None = None
    role: Literal["admin", "approver", "viewer"] | None = None
    automatic: bool = False


class SlaState(Model):
    due_at: datetime
    warn_at: datetime
    state: Literal["ok", "warning", "breached"] = "ok"


class ApprovalDecision(Model):
    subject: str
    decision: Literal["approve", "reject"]
    comment: str | None = None
    at: datetime


class PendingApproval(Model):
    approval_id: str
    to_stage: str
    from_stage: str
    requested_by: str | None = None
    approvers: list[str]
    mode: Literal["any", "all"]
    requested_at: datetime
    due_at: datetime | None = None
    escalated: bool = False
    escalated_to: list[str] = Field(default_factory=list)
    fields: dict[str, Any] = Field(default_factory=dict)
    decisions: list[ApprovalDecision] = Field(default_factory=list)


class DealState(Model):
    deal_id: str
    pipeline_id: str
    pipeline_version: int
    title: str = ""
    stage: str
    stage_entered_at: datetime
    status: Literal["open", "won", "lost"] = "open"
    value: float = 0
    currency: str = "USD"
    owner: str | None = None
    fields: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    last_activity_at: datetime
    is_rotting: bool = False
    rotting_snoozed_until: datetime | None = None
    sla: SlaState | None = None
    pending_approval: PendingApproval | None = None

    def document(self) -> dict[str, Any]:
        """What validation rules and automation conditions are evaluated against."""
        return {
            "deal_id": self.deal_id,
            "title": self.title,
            "value": self.value,
            "currency": self.currency,
            "owner": self.owner,
            "stage": self.stage,
            "status": self.status,
            "fields": self.fields,
        }
