"""Typed inputs and outputs of the deal workflow and its activities (Pydantic, one per call)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from domain.deal import Actor, DealState, Problem
from domain.engine import Effect, EngineState, HistoryEntry
from domain.events import DealEvent
from domain.pipeline import PipelineSnapshot

DEAL_WORKFLOW = "DealWorkflow"


def deal_workflow_id(deal_id: str) -> str:
    return f"deal-{deal_id}"


class WaitingEffect(BaseModel):
    """An effect asleep on its integration's open circuit breaker, carried across
    continue-as-new: the next run sleeps until ``retry_at``, then runs it again."""

    effect: Effect
    retry_at: datetime
    waited: timedelta = timedelta(0)
    """The sleeps on open circuits so far, this one included (``DEALFLOW_BREAKER_MAX_WAIT``)."""


class DealInput(BaseModel):
    """Start (or continue-as-new) input: everything a run needs to go on where the last stopped."""

    deal_id: str
    state: EngineState | None = None
    pipeline: PipelineSnapshot | None = None
    seen_event_ids: list[str] = Field(default_factory=list)
    pending_events: list[DealEvent] = Field(default_factory=list)
    waiting_effects: list[WaitingEffect] = Field(default_factory=list)


class EventBatch(BaseModel):
    events: list[DealEvent]


class TransitionRequest(BaseModel):
    to_stage: str
    fields: dict[str, Any] = Field(default_factory=dict)
    actor: Actor


class TransitionReply(BaseModel):
    outcome: Literal["moved", "pending_approval"]
    approval_id: str | None = None
    revision: int


class DecisionRequest(BaseModel):
    approval_id: str
    subject: str
    decision: Literal["approve", "reject"]
    comment: str | None = None


class DecisionReply(BaseModel):
    approval_id: str
    outcome: Literal["approved", "rejected", "pending"]
    revision: int


class SnoozeRequest(BaseModel):
    until: datetime
    actor: Actor


class EventOutcome(BaseModel):
    event_id: str
    status: Literal["processed", "failed"]
    error: str | None = None


class LoadPipelineInput(BaseModel):
    pipeline_id: str
    version: int | None = None


class LoadDealInput(BaseModel):
    deal_id: str


class LoadedDeal(BaseModel):
    state: EngineState
    pipeline: PipelineSnapshot


class LoadContextInput(BaseModel):
    """A new run's one read: the deal (if the read model knows it) and the pipelines its first
    events create it in."""

    deal_id: str
    pipeline_ids: list[str] = Field(default_factory=list)


class DealContext(BaseModel):
    deal: LoadedDeal | None = None
    pipelines: dict[str, PipelineSnapshot] = Field(default_factory=dict)
    pipeline_errors: dict[str, str] = Field(default_factory=dict)
    """Why a pipeline could not be loaded (it does not exist, or lacks the version)."""


class RecordInput(BaseModel):
    state: EngineState | None = None
    history: list[HistoryEntry] = Field(default_factory=list)
    outcomes: list[EventOutcome] = Field(default_factory=list)


class EffectInput(BaseModel):
    deal_id: str
    effect: Effect
    test_mode: bool = False


class EffectResult(BaseModel):
    executed: bool
    owner: str | None = None
    detail: str | None = None


def problems_detail(problems: list[Problem]) -> list[dict[str, Any]]:
    return [p.model_dump() for p in problems]


class MigrateRequest(BaseModel):
    """The deal workflow's ``migrate`` update: one deal's part of a bulk migration."""

    migration_id: str
    source_pipeline_id: str
    pipeline: PipelineSnapshot
    stage_map: dict[str, str]
    only_open: bool = False

    def skip_reason(self, deal: DealState) -> str | None:
        """Why this deal is left as it is (``None``: it moves), the same with or without a
        running workflow."""
        if deal.pipeline_id != self.source_pipeline_id:
            return f"the deal is in pipeline {deal.pipeline_id} now"
        if self.only_open and deal.status != "open":
            return f"the deal is {deal.status} now"
        if deal.stage not in self.stage_map:
            return f"stage '{deal.stage}' is not in the stage map"
        return None


class MigrateReply(BaseModel):
    outcome: Literal["migrated", "already_migrated", "skipped"]
    stage: str
    reason: str | None = None
    revision: int
