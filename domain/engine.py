"""The deal state machine: pure, deterministic, and shared by the deal workflow and the simulator.

An ``Engine`` holds one deal's state and its pipeline version. Inputs (events, transition
requests, approval decisions, the passing of time) change the state and append to two outboxes:
``history`` (what happened, for the read model) and ``effects`` (side effects for activities to
carry out: notifications, tasks, integration calls, least-loaded assignment). The engine never
does I/O and never reads a clock: every input carries ``now``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from domain.calendar import add_business_time
from domain.deal import (
    Actor,
    ApprovalDecision,
    DealState,
    PendingApproval,
    Problem,
    SlaState,
)
from domain.expressions import ExpressionError, evaluate, is_truthy
from domain.pipeline import AutomationSpec, PipelineSnapshot, StageSpec
from domain.rules import check_transition
from domain.sizes import fields_problem

MAX_CHAIN_DEPTH = 10


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HistoryEntry(Model):
    seq: int
    at: datetime
    kind: str
    data: dict[str, Any] = Field(default_factory=dict)


class Effect(Model):
    """A side effect to run as an activity. ``key`` is stable, for idempotency."""

    key: str
    kind: Literal["notify", "create_task", "call_integration", "assign_owner"]
    automation: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class EngineState(Model):
    """Everything the engine must carry across continue-as-new."""

    deal: DealState
    history_seq: int = 0
    revision: int = 0
    stage_entry: int = 0
    fired: list[str] = Field(default_factory=list)
    round_robin: dict[str, int] = Field(default_factory=dict)
    effect_seq: int = 0
    migrations: list[str] = Field(default_factory=list)
    """Ids of the bulk migrations applied to this deal (each one applies once)."""


class TransitionResult(Model):
    outcome: Literal["moved", "pending_approval", "refused"]
    problems: list[Problem] = Field(default_factory=list)
    approval_id: str | None = None


class DecisionResult(Model):
    outcome: Literal["approved", "rejected", "pending"]
    approval_id: str


class DecisionError(Exception):
    """A decision that cannot be taken: ``kind`` is not_found, forbidden or conflict."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Engine:
    def __init__(self, pipeline: PipelineSnapshot, state: EngineState) -> None:
        self.pipeline = pipeline
        self.spec = pipeline.spec
        self.state = state
        self.history: list[HistoryEntry] = []
        self.effects: list[Effect] = []
        self._chain: set[str] = set()
        self._depth = 0

    # ----------------------------------------------------------------- construction

    @classmethod
    def create(
        cls,
        pipeline: PipelineSnapshot,
        *,
        deal_id: str,
        title: str,
        value: float,
        currency: str,
        owner: str | None,
        fields: dict[str, Any],
        stage: str | None,
        now: datetime,
    ) -> tuple[Engine, list[Problem]]:
        spec = pipeline.spec
        first = stage or (spec.stages[0].key if spec.stages else "")
        problems: list[Problem] = []
        target = spec.stage(first)
        if target is None:
            problems.append(
                Problem(
                    code="unknown_stage",
                    loc=["data", "stage"],
                    msg=f"stage '{first}' is not in pipeline {pipeline.pipeline_id} "
                    f"(stages: {', '.join(s.key for s in spec.stages)})",
                )
            )
            first = spec.stages[0].key if spec.stages else first
        deal = DealState(
            deal_id=deal_id,
            pipeline_id=pipeline.pipeline_id,
            pipeline_version=pipeline.version,
            title=title,
            stage=first,
            stage_entered_at=now,
            value=value,
            currency=currency,
            owner=owner,
            fields=dict(fields),
            created_at=now,
            last_activity_at=now,
        )
        engine = cls(pipeline, EngineState(deal=deal))
        if problems:
            return engine, problems
        engine.record(now, "deal_created", {"stage": first, "value": value, "owner": owner})
        engine._enter_stage(now, first)
        engine._fire(now, "stage_entered", stage=first)
        return engine, []

    # ----------------------------------------------------------------- helpers

    @property
    def deal(self) -> DealState:
        return self.state.deal

    def record(self, now: datetime, kind: str, data: dict[str, Any] | None = None) -> None:
        self.state.history_seq += 1
        self.history.append(
            HistoryEntry(seq=self.state.history_seq, at=now, kind=kind, data=data or {})
        )

    def _effect(self, kind: Any, data: dict[str, Any], automation: str | None = None) -> None:
        self.state.effect_seq += 1
        self.effects.append(
            Effect(
                key=f"{self.deal.deal_id}:{self.state.effect_seq}",
                kind=kind,
                automation=automation,
                data=data,
            )
        )

    def _stage(self, key: str | None = None) -> StageSpec | None:
        return self.spec.stage(key or self.deal.stage)

    def touch(self) -> None:
        """Mark the state changed (the read model needs a new revision)."""
        self.state.revision += 1

    # ----------------------------------------------------------------- stage entry / exit

    def _enter_stage(self, now: datetime, key: str) -> None:
        """The new stage's state (clocks, SLA, outcome); automations are fired by the caller."""
        deal = self.deal
        stage = self._stage(key)
        deal.stage = key
        deal.stage_entered_at = now
        deal.last_activity_at = now
        deal.is_rotting = False
        deal.rotting_snoozed_until = None
        self.state.stage_entry += 1
        self.state.fired = []
        deal.sla = None
        if stage is not None and stage.outcome:
            deal.status = stage.outcome
            self.record(now, "deal_closed", {"status": stage.outcome, "stage": key})
        elif stage is not None and stage.sla is not None and deal.status == "open":
            target = stage.sla.target
            cal = self.spec.calendar
            deal.sla = SlaState(
                due_at=add_business_time(now, target, cal),
                warn_at=add_business_time(now, target * stage.sla.warn_at, cal),
            )
        self.touch()

    def _move(
        self,
        now: datetime,
        to_stage: str,
        actor: Actor,
        reason: str,
        fields: dict[str, Any] | None = None,
    ) -> None:
        previous = self.deal.stage
        changed = [k for k, v in (fields or {}).items() if self.deal.fields.get(k) != v]
        if fields:
            self.deal.fields.update(fields)
        if (
            self.deal.pending_approval is not None
            and self.deal.pending_approval.to_stage != to_stage
        ):
            self._withdraw_approval(now, f"the deal moved to {to_stage}")
        data: dict[str, Any] = {
            "from": previous,
            "to": to_stage,
            "by": actor.subject,
            "reason": reason,
        }
        if changed:
            data["fields"] = changed
        self.record(now, "stage_changed", data)
        self._enter_stage(now, to_stage)
        # The deal is in its new stage before any automation runs, so an automation that moves
        # it on (from stage_exited or stage_entered) starts from where the deal really is.
        entry = self.state.stage_entry
        self._fire(now, "stage_exited", stage=previous)
        if self.state.stage_entry == entry:
            self._fire(now, "stage_entered", stage=to_stage)
        for name in changed:
            if self.state.stage_entry != entry:
                break
            self._fire(now, "field_changed", stage=to_stage, field=name)

    # ----------------------------------------------------------------- automations

    def _matches(
        self,
        auto: AutomationSpec,
        on: str,
        stage: str | None,
        field: str | None,
        now: datetime | None = None,
    ) -> bool:
        trig = auto.trigger
        if trig.on != on:
            return False
        if trig.stage is not None and trig.stage != stage:
            return False
        if on == "field_changed" and trig.field != field:
            return False
        doc = self.deal.document()
        for cond in auto.conditions:
            try:
                if not is_truthy(evaluate(cond.expr, doc)):
                    return False
            except ExpressionError as exc:
                # A condition that cannot be evaluated does not hold; it must not crash the
                # workflow (a raising workflow task would retry forever).
                if now is not None:
                    self.record(
                        now,
                        "automation_condition_failed",
                        {"automation": auto.name, "expr": cond.expr, "error": str(exc)},
                    )
                return False
        return True

    def _fire(
        self, now: datetime, on: str, *, stage: str | None = None, field: str | None = None
    ) -> None:
        entry = self.state.stage_entry
        for index, auto in enumerate(self.spec.automations):
            if self.state.stage_entry != entry:
                return  # an automation moved the deal on: the rest no longer apply
            if self._matches(auto, on, stage, field, now):
                self._run_automation(now, index, auto)

    def _run_automation(self, now: datetime, index: int, auto: AutomationSpec) -> None:
        key = f"{index}:{auto.name}"
        if key in self._chain:
            self.record(
                now,
                "automation_loop_stopped",
                {"automation": auto.name, "reason": "already ran in this chain of moves"},
            )
            return
        if self._depth >= MAX_CHAIN_DEPTH:
            self.record(
                now,
                "automation_loop_stopped",
                {"automation": auto.name, "reason": f"chain depth limit {MAX_CHAIN_DEPTH}"},
            )
            return
        self._chain.add(key)
        self._depth += 1
        try:
            self.record(now, "automation_ran", {"automation": auto.name, "on": auto.trigger.on})
            for action in auto.actions:
                if self.deal.status != "open" and action.do == "move_to_stage":
                    continue
                self._run_action(now, auto, action)
        finally:
            self._depth -= 1

    def _run_action(self, now: datetime, auto: AutomationSpec, action: Any) -> None:
        deal = self.deal
        name = auto.name
        if action.do == "move_to_stage":
            if action.stage == deal.stage:
                return
            self.request_transition(
                action.stage, Actor(subject=f"automation:{name}", automatic=True), {}, now
            )
        elif action.do == "set_field":
            before = deal.fields.get(action.field)
            deal.fields[action.field] = action.value
            self.touch()
            self.record(now, "field_set", {"field": action.field, "value": action.value})
            if before != action.value:
                self._fire(now, "field_changed", stage=deal.stage, field=action.field)
        elif action.do == "assign_owner":
            self._assign(now, name, action)
        elif action.do == "notify":
            self._effect(
                "notify",
                {
                    "channel": action.channel,
                    "to": action.to,
                    "template": action.template,
                    "context": self._context(),
                },
                automation=name,
            )
        elif action.do == "create_task":
            due = now + action.due_in if action.due_in else None
            self._effect(
                "create_task",
                {
                    "template": action.template,
                    "due_at": due.isoformat() if due else None,
                    "context": self._context(),
                },
                automation=name,
            )
        elif action.do == "call_integration":
            self._effect(
                "call_integration",
                {
                    "integration": action.integration,
                    "payload": action.payload or {},
                    "context": self._context(),
                },
                automation=name,
            )

    def _assign(self, now: datetime, name: str, action: Any) -> None:
        deal = self.deal
        owner: str | None = None
        if action.strategy == "by_field":
            value = deal.fields.get(action.field or "")
            owner = str(value) if value not in (None, "") else None
        elif action.strategy == "round_robin" and action.among:
            turn = self.state.round_robin.get(name, 0)
            owner = action.among[turn % len(action.among)]
            self.state.round_robin[name] = turn + 1
        elif action.strategy == "least_loaded" and action.among:
            self._effect("assign_owner", {"among": list(action.among)}, automation=name)
            return
        if owner is not None:
            self.set_owner(now, owner, reason=f"automation:{name}")

    def set_owner(self, now: datetime, owner: str, reason: str) -> None:
        if self.deal.owner == owner:
            return
        self.record(now, "owner_assigned", {"from": self.deal.owner, "to": owner, "by": reason})
        self.deal.owner = owner
        self.touch()

    def _context(self) -> dict[str, Any]:
        deal = self.deal
        return {
            "deal_id": deal.deal_id,
            "title": deal.title,
            "stage": deal.stage,
            "status": deal.status,
            "owner": deal.owner,
            "value": deal.value,
            "currency": deal.currency,
            "pipeline_id": deal.pipeline_id,
            "test_mode": self.pipeline.test_mode,
        }

    def _begin_chain(self) -> None:
        self._chain = set()
        self._depth = 0

    # ----------------------------------------------------------------- inputs

    def update(self, now: datetime, data: dict[str, Any]) -> None:
        """``deal.updated``: fields, value, title, owner; counts as activity."""
        self._begin_chain()
        deal = self.deal
        changed: list[str] = []
        for name, value in (data.get("fields") or {}).items():
            if deal.fields.get(name) != value:
                deal.fields[name] = value
                changed.append(name)
        for attr in ("value", "title", "owner"):
            if data.get(attr) is not None and getattr(deal, attr) != data[attr]:
                setattr(deal, attr, data[attr])
                changed.append(attr)
        self.record(now, "deal_updated", {"changed": changed})
        self._activity(now)
        for name in changed:
            self._fire(now, "field_changed", stage=deal.stage, field=name)

    def activity(self, now: datetime, kind: str) -> None:
        """``deal.activity`` (a call, an e-mail, a meeting): resets the rotting clock."""
        self._begin_chain()
        self.record(now, "activity", {"kind": kind})
        self._activity(now)

    def _activity(self, now: datetime) -> None:
        deal = self.deal
        deal.last_activity_at = now
        if deal.is_rotting:
            deal.is_rotting = False
            self.record(now, "rotting_cleared", {})
        self.touch()

    def snooze_rotting(self, now: datetime, until: datetime) -> None:
        self.deal.rotting_snoozed_until = until
        self.deal.is_rotting = False
        self.record(now, "rotting_snoozed", {"until": until.isoformat()})
        self.touch()

    def request_transition(
        self, to_stage: str, actor: Actor, fields: dict[str, Any] | None, now: datetime
    ) -> TransitionResult:
        """Move, hold the move for approval, or refuse it listing every broken rule."""
        if not actor.automatic:
            self._begin_chain()
        problems = self.check(to_stage, actor, fields)
        if problems:
            if actor.automatic:
                self.record(
                    now,
                    "automation_move_refused",
                    {"to": to_stage, "by": actor.subject, "problems": [p.msg for p in problems]},
                )
            return TransitionResult(outcome="refused", problems=problems)
        stage = self.spec.stage(to_stage)
        assert stage is not None
        if stage.approval is not None:
            # The fields sent with the move wait with it: a rejected move changes nothing.
            return self._request_approval(now, stage, actor, fields or {})
        self._move(
            now,
            to_stage,
            actor,
            reason="automation" if actor.automatic else "request",
            fields=fields,
        )
        return TransitionResult(outcome="moved")

    def check(self, to_stage: str, actor: Actor, fields: dict[str, Any] | None) -> list[Problem]:
        """The rules alone (used by the workflow's update validator: it changes nothing)."""
        deal = self.deal
        pending = deal.pending_approval
        view = deal.model_copy(update={"pending_approval": None})
        if actor.automatic:
            actor = Actor(subject=actor.subject, role="admin", automatic=True)
        problems = check_transition(self.spec, view, to_stage, actor, fields or {})
        if (too_large := fields_problem(deal.fields, fields)) is not None:
            problems.append(Problem(code="too_large", loc=["fields"], msg=too_large))
        if pending is not None and pending.to_stage == to_stage:
            problems.append(
                Problem(
                    code="approval_pending",
                    loc=["to_stage"],
                    msg=f"a move to '{to_stage}' is already waiting for approval "
                    f"({pending.approval_id})",
                )
            )
        return problems

    # ----------------------------------------------------------------- approvals

    def _request_approval(
        self, now: datetime, stage: StageSpec, actor: Actor, fields: dict[str, Any]
    ) -> TransitionResult:
        assert stage.approval is not None
        deal = self.deal
        if deal.pending_approval is not None:
            self._withdraw_approval(now, f"a move to {stage.key} was requested instead")
        self.state.effect_seq += 1
        approval_id = f"apr_{deal.deal_id}_{self.state.effect_seq}"
        spec = stage.approval
        deal.pending_approval = PendingApproval(
            approval_id=approval_id,
            to_stage=stage.key,
            from_stage=deal.stage,
            requested_by=actor.subject,
            approvers=list(spec.approvers),
            mode=spec.mode,
            requested_at=now,
            due_at=now + spec.timeout if spec.timeout else None,
            fields=dict(fields),
        )
        self.touch()
        self.record(
            now,
            "approval_requested",
            {
                "approval_id": approval_id,
                "from": deal.stage,
                "to": stage.key,
                "approvers": list(spec.approvers),
                "mode": spec.mode,
                "by": actor.subject,
                "due_at": deal.pending_approval.due_at.isoformat()
                if deal.pending_approval.due_at
                else None,
            },
        )
        self._effect(
            "notify",
            {
                "channel": "log",
                "to": list(spec.approvers),
                "template": "approval_requested",
                "context": {**self._context(), "approval_id": approval_id, "to_stage": stage.key},
            },
        )
        return TransitionResult(outcome="pending_approval", approval_id=approval_id)

    def _withdraw_approval(self, now: datetime, reason: str) -> None:
        pending = self.deal.pending_approval
        if pending is None:
            return
        self.deal.pending_approval = None
        self.touch()
        self.record(
            now,
            "approval_withdrawn",
            {"approval_id": pending.approval_id, "to": pending.to_stage, "reason": reason},
        )

    @staticmethod
    def eligible_approvers(pending: PendingApproval) -> list[str]:
        extra = [s for s in pending.escalated_to if s not in pending.approvers]
        return [*pending.approvers, *extra]

    def check_decision(self, approval_id: str, subject: str | None) -> PendingApproval:
        pending = self.deal.pending_approval
        if pending is None or pending.approval_id != approval_id:
            raise DecisionError("conflict", f"approval {approval_id} is not pending any more")
        if subject is None or subject not in self.eligible_approvers(pending):
            raise DecisionError("forbidden", f"'{subject}' is not an approver of {approval_id}")
        if any(d.subject == subject for d in pending.decisions):
            raise DecisionError("conflict", f"'{subject}' already decided {approval_id}")
        return pending

    def decide(
        self,
        now: datetime,
        approval_id: str,
        subject: str,
        decision: Literal["approve", "reject"],
        comment: str | None = None,
    ) -> DecisionResult:
        pending = self.check_decision(approval_id, subject)
        self._begin_chain()
        pending.decisions.append(
            ApprovalDecision(subject=subject, decision=decision, comment=comment, at=now)
        )
        self.touch()
        self.record(
            now,
            "approval_decision",
            {"approval_id": approval_id, "by": subject, "decision": decision, "comment": comment},
        )
        outcome = self._approval_outcome(pending, subject, decision)
        if outcome == "approved":
            self._resolve_approval(now, pending, approved=True, reason=f"approved by {subject}")
        elif outcome == "rejected":
            self._resolve_approval(now, pending, approved=False, reason=f"rejected by {subject}")
        return DecisionResult(outcome=outcome, approval_id=approval_id)

    def _approval_outcome(
        self, pending: PendingApproval, subject: str, decision: str
    ) -> Literal["approved", "rejected", "pending"]:
        if decision == "reject":
            return "rejected"
        if pending.mode == "any" or subject not in pending.approvers:
            return "approved"  # an escalation approver decides alone
        approved = {d.subject for d in pending.decisions if d.decision == "approve"}
        return "approved" if all(a in approved for a in pending.approvers) else "pending"

    def _resolve_approval(
        self, now: datetime, pending: PendingApproval, *, approved: bool, reason: str
    ) -> None:
        self.deal.pending_approval = None
        self.touch()
        self.record(
            now,
            "approval_resolved",
            {
                "approval_id": pending.approval_id,
                "status": "approved" if approved else "rejected",
                "reason": reason,
            },
        )
        if approved:
            self._move(
                now,
                pending.to_stage,
                Actor(subject=pending.requested_by),
                reason=f"approval {pending.approval_id}",
                fields=pending.fields,
            )

    # ----------------------------------------------------------------- time

    def deadlines(self) -> list[datetime]:
        """Every future instant at which ``advance`` has something to do."""
        deal = self.deal
        out: list[datetime] = []
        if deal.status != "open":
            return out
        if deal.sla is not None:
            if deal.sla.state == "ok":
                out.append(deal.sla.warn_at)
            if deal.sla.state != "breached":
                out.append(deal.sla.due_at)
        rot = self.rotting_deadline()
        if rot is not None and not deal.is_rotting:
            out.append(rot)
        if deal.pending_approval is not None and deal.pending_approval.due_at is not None:
            out.append(deal.pending_approval.due_at)
        for index, auto in enumerate(self.spec.automations):
            trig = auto.trigger
            if (
                trig.on == "time_in_stage"
                and trig.after is not None
                and trig.stage in (None, deal.stage)
                and f"t{index}" not in self.state.fired
            ):
                out.append(deal.stage_entered_at + trig.after)
        return out

    def next_deadline(self) -> datetime | None:
        found = self.deadlines()
        return min(found) if found else None

    def rotting_deadline(self) -> datetime | None:
        stage = self._stage()
        if stage is None or stage.rotting is None:
            return None
        deadline = self.deal.last_activity_at + stage.rotting
        snoozed = self.deal.rotting_snoozed_until
        if snoozed is not None and snoozed > deadline:
            deadline = snoozed
        return deadline

    def advance(self, now: datetime) -> None:
        """Carry out everything due at or before ``now``: SLA, rotting, approvals, time triggers."""
        deal = self.deal
        if deal.status != "open":
            return
        self._begin_chain()
        stage_key = deal.stage
        sla = deal.sla
        if sla is not None and sla.state == "ok" and now >= sla.warn_at:
            sla.state = "warning"
            self.touch()
            self.record(now, "sla_warning", {"stage": stage_key, "due_at": sla.due_at.isoformat()})
            self._fire(now, "sla_warning", stage=stage_key)
        sla = deal.sla
        if sla is not None and sla.state != "breached" and now >= sla.due_at:
            sla.state = "breached"
            self.touch()
            self.record(now, "sla_breached", {"stage": stage_key, "due_at": sla.due_at.isoformat()})
            self._effect(
                "notify",
                {
                    "channel": "log",
                    "to": deal.owner or "owner",
                    "template": "sla_breached",
                    "context": self._context(),
                },
            )
            self._fire(now, "sla_breached", stage=stage_key)
        rot = self.rotting_deadline()
        if (
            deal.status == "open"
            and deal.stage == stage_key
            and rot is not None
            and not deal.is_rotting
            and now >= rot
        ):
            deal.is_rotting = True
            self.touch()
            self.record(now, "rotting", {"stage": stage_key, "since": rot.isoformat()})
            self._effect(
                "notify",
                {
                    "channel": "log",
                    "to": deal.owner or "owner",
                    "template": "deal_rotting",
                    "context": self._context(),
                },
            )
            self._fire(now, "rotting", stage=stage_key)
        pending = deal.pending_approval
        if pending is not None and pending.due_at is not None and now >= pending.due_at:
            self._approval_timeout(now, pending)
        for index, auto in enumerate(self.spec.automations):
            trig = auto.trigger
            if (
                trig.on == "time_in_stage"
                and trig.after is not None
                and deal.status == "open"
                and trig.stage in (None, deal.stage)
                and f"t{index}" not in self.state.fired
                and now >= deal.stage_entered_at + trig.after
            ):
                self.state.fired.append(f"t{index}")
                if self._matches(auto, "time_in_stage", deal.stage, None, now):
                    self._run_automation(now, index, auto)

    def _approval_timeout(self, now: datetime, pending: PendingApproval) -> None:
        stage = self.spec.stage(pending.to_stage)
        spec = stage.approval if stage else None
        action = spec.on_timeout if spec else "reject"
        if action == "escalate" and spec is not None:
            pending.escalated = True
            pending.escalated_to = list(spec.escalate_to)
            pending.due_at = now + spec.timeout if spec.timeout else None
            self.touch()
            self.record(
                now,
                "approval_escalated",
                {"approval_id": pending.approval_id, "to": list(spec.escalate_to)},
            )
            self._effect(
                "notify",
                {
                    "channel": "log",
                    "to": list(spec.escalate_to),
                    "template": "approval_escalated",
                    "context": {**self._context(), "approval_id": pending.approval_id},
                },
            )
        else:
            self._resolve_approval(
                now, pending, approved=action == "approve", reason="approval timed out"
            )

    # ----------------------------------------------------------------- migration

    def migrate(
        self, snapshot: PipelineSnapshot, to_stage: str, now: datetime, migration_id: str
    ) -> bool:
        """Move the deal to ``to_stage`` of another pipeline (or version): a bulk migration.

        An administrative move: no movement rules, approvals or automations apply (a bulk move
        must not notify every owner). A pending approval is withdrawn. The deal enters the new
        stage afresh (SLA and rotting clocks restart) unless it keeps the same stage of the same
        pipeline, where its clocks go on. Applied once per ``migration_id``: a second call
        changes nothing and returns False.
        """
        if migration_id in self.state.migrations:
            return False
        if snapshot.spec.stage(to_stage) is None:
            raise ValueError(f"stage '{to_stage}' is not in pipeline {snapshot.pipeline_id}")
        self._begin_chain()
        deal = self.deal
        before = (deal.pipeline_id, deal.pipeline_version, deal.stage)
        self._withdraw_approval(now, f"migration {migration_id}")
        self.pipeline = snapshot
        self.spec = snapshot.spec
        deal.pipeline_id = snapshot.pipeline_id
        deal.pipeline_version = snapshot.version
        self.state.migrations.append(migration_id)
        self.record(
            now,
            "migrated",
            {
                "migration_id": migration_id,
                "from_pipeline": before[0],
                "from_version": before[1],
                "from": before[2],
                "to_pipeline": snapshot.pipeline_id,
                "to_version": snapshot.version,
                "to": to_stage,
            },
        )
        stage = self._stage(to_stage)
        assert stage is not None
        if before[0] != snapshot.pipeline_id or before[2] != to_stage:
            if deal.status != "open" and stage.outcome is None:
                # A closed deal stays closed: it only changes place (and keeps its outcome).
                deal.stage = to_stage
                deal.stage_entered_at = now
                deal.sla = None
                self.state.stage_entry += 1
                self.state.fired = []
                self.touch()
            else:
                self._enter_stage(now, to_stage)
        else:
            # Same stage of a new version: the clocks go on; the SLA goes if the stage lost it.
            if stage.sla is None:
                deal.sla = None
            if stage.outcome is not None and deal.status != stage.outcome:
                deal.status = stage.outcome
                self.record(now, "deal_closed", {"status": stage.outcome, "stage": to_stage})
            self.touch()
        return True
