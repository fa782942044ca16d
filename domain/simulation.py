"""Dry runs of a pipeline: a scripted deal path through the real deal state machine.

:func:`simulate` drives :class:`domain.engine.Engine` - the same object the deal workflow wraps -
with a fake clock. Before each step every engine deadline due by the step's time (SLA warning and
breach, rotting, approval timeouts, time-in-stage automations) is carried out at its own instant,
exactly as the workflow's timers would. Side effects the engine asks for (notifications, tasks,
integration calls, least-loaded assignment) are listed in the timeline as ``action_planned`` and
never executed; nothing is written anywhere.

A script::

    {"deal": {"title", "value", "currency"?, "owner"?, "fields"?, "stage"?},
     "start_at"?: RFC 3339,
     "steps": [{"do": "move", "to_stage", "actor"?: {"subject", "role"}, "fields"?},
               {"do": "update", "fields"?, "value"?, "title"?, "owner"?},
               {"do": "activity", "kind"},
               {"do": "approve" | "reject", "subject", "approval"?: "latest" | id, "comment"?},
               {"do": "wait", "for": duration}]}

Every step but ``wait`` may say when it happens: ``"at"`` (an instant, not before the previous
step) or ``"after"`` (a duration after the previous step); without either it happens at once.
A move without an ``actor`` is made by ``{"subject": "simulation", "role": null}``: an
integration's key, to which the pipeline's skip/backward rules apply (admins may always skip).

The result: ``steps`` (one per script step: ``at``, ``do``, ``outcome`` - ``moved``,
``pending_approval``, ``refused`` or ``ok`` - ``problems``, ``approval_id``, and the deal's stage
and SLA right after it), ``timeline`` (the engine's history entries in order, each with ``step``:
the step during or before which it happened, ``null`` for the creation; planned effects as
``action_planned``) and ``final`` (the deal's state after the last step).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from domain.deal import Actor, Problem
from domain.durations import Duration
from domain.engine import DecisionError, Engine
from domain.pipeline import PipelineSnapshot
from domain.rules import status_for

__all__ = ["Script", "SimulationError", "script_problems", "simulate"]

MAX_STEPS = 500
MAX_ADVANCES = 5_000
"""Deadlines carried out in one simulation at most (an escalating approval re-arms forever)."""
DEFAULT_START = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
"""The simulated clock (``start_at``, every step's ``at``, each wait and ``after`` added up) stays
in [EARLIEST, LATEST]: deadlines up to a longest duration (100 years) past it, or business time
counted day by day around it, must still be dates Python can represent (the year 1 to 9999)."""
CLOCK_RANGE = f"{EARLIEST.isoformat()} to {LATEST.isoformat()}"
DEFAULT_ACTOR = Actor(subject="simulation", role=None)
SIM_DEAL_ID = "sim"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SimDeal(_Model):
    deal_id: str = Field(SIM_DEAL_ID, min_length=1, max_length=200)
    title: str = Field("Simulated deal", max_length=500)
    value: float = Field(0, ge=0)
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    owner: str | None = None
    fields: dict[str, Any] = Field(default_factory=dict)
    stage: str | None = None


class SimActor(_Model):
    subject: str = Field(min_length=1, max_length=200)
    role: Literal["admin", "approver", "viewer"] | None = None


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError("give a time zone (RFC 3339, e.g. 2025-01-06T09:00:00Z)")
    return value.astimezone(UTC) if value is not None else None


class _Timed(_Model):
    at: datetime | None = None
    after: Duration | None = None

    @field_validator("at")
    @classmethod
    def _check_at(cls, value: datetime | None) -> datetime | None:
        return _aware(value)


class MoveStep(_Timed):
    do: Literal["move"]
    to_stage: str = Field(min_length=1, max_length=64)
    actor: SimActor | None = None
    fields: dict[str, Any] = Field(default_factory=dict)


class UpdateStep(_Timed):
    do: Literal["update"]
    fields: dict[str, Any] | None = None
    value: float | None = Field(None, ge=0)
    title: str | None = None
    owner: str | None = None


class ActivityStep(_Timed):
    do: Literal["activity"]
    kind: str = Field("activity", min_length=1, max_length=100)


class ApproveStep(_Timed):
    do: Literal["approve"]
    subject: str = Field(min_length=1, max_length=200)
    approval: str = "latest"
    comment: str | None = None


class RejectStep(_Timed):
    do: Literal["reject"]
    subject: str = Field(min_length=1, max_length=200)
    approval: str = "latest"
    comment: str | None = None


class WaitStep(_Model):
    do: Literal["wait"]
    for_: Duration = Field(alias="for")


Step = Annotated[
    MoveStep | UpdateStep | ActivityStep | ApproveStep | RejectStep | WaitStep,
    Field(discriminator="do"),
]


class Script(_Model):
    deal: SimDeal = Field(default_factory=SimDeal)
    start_at: datetime | None = None
    steps: list[Step] = Field(default_factory=list, max_length=MAX_STEPS)

    @field_validator("start_at")
    @classmethod
    def _check_start(cls, value: datetime | None) -> datetime | None:
        return _aware(value)


class SimulationError(ValueError):
    """The script cannot run as written (every problem is listed, each with its ``loc``)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.msg for p in problems))
        self.problems = problems


def script_problems(
    snapshot: PipelineSnapshot, script: Script, *, start_at: datetime | None = None
) -> list[Problem]:
    """What is wrong with the script itself (not with the moves it tries: those are outcomes).

    ``start_at`` is the start when the script has none (as for :func:`simulate`)."""
    problems: list[Problem] = []
    spec = snapshot.spec
    if script.deal.stage is not None and spec.stage(script.deal.stage) is None:
        known = ", ".join(repr(s.key) for s in spec.stages)
        problems.append(
            Problem(
                code="unknown_stage",
                loc=["deal", "stage"],
                msg=f"{script.deal.stage!r} is not a stage of this pipeline ({known})",
            )
        )
    now = script.start_at or start_at or DEFAULT_START
    if not EARLIEST <= now <= LATEST:
        problems.append(_off_the_clock(["start_at"], now, "the simulation starts"))
        return problems
    for i, step in enumerate(script.steps):
        if isinstance(step, WaitStep):
            now = now + step.for_
            if now > LATEST:
                problems.append(_off_the_clock(["steps", i, "for"], now, "this wait ends"))
                return problems
            continue
        if step.at is not None and step.after is not None:
            problems.append(
                Problem(
                    code="invalid_step_time",
                    loc=["steps", i],
                    msg="a step takes 'at' or 'after', not both",
                )
            )
        elif step.at is not None:
            if step.at < now:
                problems.append(
                    Problem(
                        code="invalid_step_time",
                        loc=["steps", i, "at"],
                        msg=f"{step.at.isoformat()} is before the previous step "
                        f"({now.isoformat()}): steps run forward in time",
                    )
                )
            elif step.at > LATEST:
                problems.append(_off_the_clock(["steps", i, "at"], step.at, "this step is"))
                return problems
            else:
                now = step.at
        elif step.after is not None:
            now = now + step.after
            if now > LATEST:
                problems.append(_off_the_clock(["steps", i, "after"], now, "this step is"))
                return problems
    return problems


def _off_the_clock(loc: list[str | int], at: datetime, what: str) -> Problem:
    return Problem(
        code="invalid_step_time",
        loc=loc,
        msg=f"{what} at {at.isoformat()}: the simulated clock must stay within {CLOCK_RANGE}",
    )


class _Run:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.timeline: list[dict[str, Any]] = []
        self.advances = 0
        self.truncated = False

    def drain(self, step: int | None, now: datetime) -> None:
        """Move what the engine produced into the timeline (history, then planned effects)."""
        engine = self.engine
        for entry in engine.history:
            self.timeline.append(
                {
                    "seq": entry.seq,
                    "at": entry.at.isoformat(),
                    "kind": entry.kind,
                    "data": entry.data,
                    "step": step,
                }
            )
        at = (engine.history[-1].at if engine.history else now).isoformat()
        for effect in engine.effects:
            self.timeline.append(
                {
                    "seq": None,
                    "at": at,
                    "kind": "action_planned",
                    "data": {
                        "effect": effect.kind,
                        "automation": effect.automation,
                        "key": effect.key,
                        "executed": False,
                        **effect.data,
                    },
                    "step": step,
                }
            )
        engine.history.clear()
        engine.effects.clear()

    def advance_to(self, until: datetime, step: int | None) -> None:
        """Every deadline up to ``until``, each at its own instant (as the workflow's timers)."""
        engine = self.engine
        while not self.truncated:
            deadline = engine.next_deadline()
            if deadline is None or deadline > until:
                return
            if self.advances >= MAX_ADVANCES:
                self.truncated = True
                return
            self.advances += 1
            engine.advance(deadline)
            self.drain(step, deadline)
            if engine.next_deadline() == deadline:
                # Nothing the engine can do at this instant any more (it would loop forever).
                self.truncated = True
                return


def _sla(engine: Engine) -> dict[str, Any] | None:
    sla = engine.deal.sla
    if sla is None:
        return None
    return {
        "due_at": sla.due_at.isoformat(),
        "warn_at": sla.warn_at.isoformat(),
        "state": sla.state,
    }


def _final(engine: Engine, now: datetime) -> dict[str, Any]:
    deal = engine.deal
    pending = deal.pending_approval
    return {
        "at": now.isoformat(),
        "stage": deal.stage,
        "stage_entered_at": deal.stage_entered_at.isoformat(),
        "status": deal.status,
        "value": deal.value,
        "currency": deal.currency,
        "owner": deal.owner,
        "fields": deal.fields,
        "is_rotting": deal.is_rotting,
        "rotting_due_at": (
            rot.isoformat()
            if deal.status == "open" and not deal.is_rotting and (rot := engine.rotting_deadline())
            else None
        ),
        "sla": _sla(engine),
        "pending_approval": pending.model_dump(mode="json") if pending else None,
        "pipeline_version": deal.pipeline_version,
    }


def _problem_dicts(problems: list[Problem]) -> list[dict[str, Any]]:
    return [p.model_dump(mode="json") for p in problems]


def simulate(
    snapshot: PipelineSnapshot, script: Script | dict[str, Any], *, start_at: datetime | None = None
) -> dict[str, Any]:
    """Run ``script`` against ``snapshot`` and tell what would happen (see the module docstring).

    ``start_at`` is the default start when the script has none (the API passes the current
    time; without either the simulation starts at a fixed instant, so results are reproducible).
    Raises :class:`SimulationError` when the script cannot run as written (an unknown starting
    stage, steps going back in time).
    """
    if not isinstance(script, Script):
        script = Script.model_validate(script)
    problems = script_problems(snapshot, script, start_at=start_at)
    if problems:
        raise SimulationError(problems)
    now = _aware(script.start_at or start_at) or DEFAULT_START
    spec = snapshot.spec
    deal = script.deal
    engine, created = Engine.create(
        snapshot,
        deal_id=deal.deal_id,
        title=deal.title,
        value=deal.value,
        currency=deal.currency or spec.currency,
        owner=deal.owner,
        fields=deal.fields,
        stage=deal.stage,
        now=now,
    )
    if created:
        raise SimulationError(created)
    run = _Run(engine)
    run.drain(None, now)
    steps: list[dict[str, Any]] = []
    for index, step in enumerate(script.steps):
        if isinstance(step, WaitStep):
            target = now + step.for_
        elif step.at is not None:
            target = step.at
        elif step.after is not None:
            target = now + step.after
        else:
            target = now
        run.advance_to(target, index)
        now = target
        result: dict[str, Any] = {
            "index": index,
            "at": now.isoformat(),
            "do": step.do,
            "outcome": "ok",
            "problems": [],
        }
        if isinstance(step, MoveStep):
            actor = (
                Actor(subject=step.actor.subject, role=step.actor.role)
                if step.actor
                else DEFAULT_ACTOR
            )
            reply = engine.request_transition(step.to_stage, actor, step.fields, now)
            result["outcome"] = reply.outcome
            result["to_stage"] = step.to_stage
            if reply.outcome == "refused":
                result["problems"] = _problem_dicts(reply.problems)
                result["status"] = status_for(reply.problems)
            if reply.approval_id:
                result["approval_id"] = reply.approval_id
        elif isinstance(step, UpdateStep):
            data = {
                k: v
                for k, v in {
                    "fields": step.fields,
                    "value": step.value,
                    "title": step.title,
                    "owner": step.owner,
                }.items()
                if v is not None
            }
            engine.update(now, data)
        elif isinstance(step, ActivityStep):
            engine.activity(now, step.kind)
        elif isinstance(step, ApproveStep | RejectStep):
            _decide(engine, step, now, result)
        run.drain(index, now)
        result["stage"] = engine.deal.stage
        result["status_after"] = engine.deal.status
        result["sla"] = _sla(engine)
        steps.append(result)
    return {
        "pipeline_id": snapshot.pipeline_id,
        "version": snapshot.version,
        "start_at": (script.start_at or start_at or DEFAULT_START).isoformat(),
        "steps": steps,
        "timeline": run.timeline,
        "final": _final(engine, now),
        "truncated": run.truncated,
        "side_effects": "none: effects are listed as action_planned and never executed",
    }


def _decide(
    engine: Engine, step: ApproveStep | RejectStep, now: datetime, result: dict[str, Any]
) -> None:
    pending = engine.deal.pending_approval
    approval_id = step.approval
    if approval_id == "latest":
        if pending is None:
            result["outcome"] = "refused"
            result["problems"] = [
                {
                    "code": "no_pending_approval",
                    "loc": ["approval"],
                    "msg": "no approval is pending for this deal",
                }
            ]
            return
        approval_id = pending.approval_id
    result["approval_id"] = approval_id
    decision: Literal["approve", "reject"] = "approve" if step.do == "approve" else "reject"
    try:
        reply = engine.decide(now, approval_id, step.subject, decision, step.comment)
    except DecisionError as exc:
        result["outcome"] = "refused"
        result["problems"] = [{"code": exc.kind, "loc": ["subject"], "msg": exc.message}]
        return
    result["decision"] = reply.outcome
    if reply.outcome == "approved":
        result["outcome"] = "moved"
    elif reply.outcome == "pending":
        result["outcome"] = "pending_approval"
    else:
        result["outcome"] = "ok"
