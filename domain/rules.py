"""May this deal move to that stage? Pure checks the deal workflow and the API both run.

:func:`check_transition` lists every rule that refuses a move (an empty list means it may go
ahead); :func:`status_for` picks the HTTP status for such a list; :func:`needs_approval` and
:func:`approval_outcome` drive approvals. Nothing here reads a clock or does I/O.

Problem codes: ``deal_closed``, ``unknown_stage``, ``same_stage``, ``approval_pending``,
``skip_denied``, ``backward_denied`` (409: the move is not allowed now) and
``missing_required_field``, ``validation_failed`` (422: the deal's data is not good enough yet).
"""

from __future__ import annotations

from typing import Any, Literal

from domain.deal import Actor, DealState, PendingApproval, Problem
from domain.expressions import ExpressionError, holds
from domain.pipeline import ApprovalSpec, Permission, PipelineSpec, StageSpec

__all__ = [
    "approval_outcome",
    "check_transition",
    "is_missing",
    "needs_approval",
    "permits",
    "probability_of",
    "status_for",
]

DATA_PROBLEMS = frozenset({"missing_required_field", "validation_failed", "too_large"})


def permits(permission: Permission, actor: Actor) -> bool:
    """Whether a ``rules.skip``/``rules.backward`` setting lets ``actor`` do it (admins always)."""
    if actor.role == "admin":
        return True
    if permission == "allow":
        return True
    if permission == "deny":
        return False
    return actor.subject is not None and actor.subject in permission


def is_missing(value: Any) -> bool:
    """A required field counts as missing when it is absent, ``null`` or a blank string."""
    return value is None or (isinstance(value, str) and not value.strip())


def _open_stages_between(spec: PipelineSpec, low: int, high: int) -> list[StageSpec]:
    return [s for s in spec.stages[low + 1 : high] if s.outcome is None]


def check_transition(
    spec: PipelineSpec,
    deal: DealState,
    to_stage: str,
    actor: Actor,
    fields: dict[str, Any] | None = None,
) -> list[Problem]:
    """Every rule that refuses moving ``deal`` to ``to_stage`` (empty: the move is allowed).

    ``fields`` are the values sent with the move; they are merged over the deal's fields before
    required fields and validation rules of the target stage are checked. A pending approval for
    this same target is not a refusal (the caller answers with that approval); one for another
    target is. Moving more than one stage forward ("skipping") needs ``rules.skip``; moving back
    needs ``rules.backward``; admins may always do both, and an outcome stage (won/lost) may be
    reached from any open stage. The approval a target stage needs is not checked here: see
    :func:`needs_approval`.
    """
    problems: list[Problem] = []

    def refuse(code: str, msg: str, loc: list[str | int] | None = None) -> None:
        problems.append(Problem(code=code, loc=["to_stage"] if loc is None else loc, msg=msg))

    if deal.status != "open":
        refuse("deal_closed", f"the deal is closed ({deal.status}); it cannot move", ["status"])

    pending = deal.pending_approval
    if pending is not None and pending.to_stage != to_stage:
        refuse(
            "approval_pending",
            f"a move to {pending.to_stage!r} is waiting for approval "
            f"({pending.approval_id}); decide it first",
        )

    target = spec.stage(to_stage)
    if target is None:
        known = ", ".join(repr(s.key) for s in spec.stages)
        refuse("unknown_stage", f"{to_stage!r} is not a stage of this pipeline ({known})")
        return problems

    if to_stage == deal.stage:
        refuse("same_stage", f"the deal is already in {to_stage!r}")

    here, there = spec.index_of(deal.stage), spec.index_of(to_stage)
    if here >= 0 and to_stage != deal.stage:
        if there > here and target.outcome is None:
            skipped = _open_stages_between(spec, here, there)
            if skipped and not permits(spec.rules.skip, actor):
                names = ", ".join(repr(s.key) for s in skipped)
                refuse(
                    "skip_denied",
                    f"moving from {deal.stage!r} to {to_stage!r} skips {names}; "
                    "this pipeline does not allow you to skip stages",
                )
        elif there < here and not permits(spec.rules.backward, actor):
            refuse(
                "backward_denied",
                f"moving back from {deal.stage!r} to {to_stage!r} is not allowed for you "
                "in this pipeline",
            )

    merged = {**deal.fields, **(fields or {})}
    for name in target.required_fields:
        if is_missing(merged.get(name)):
            refuse(
                "missing_required_field",
                f"{name!r} is required to enter {to_stage!r}",
                ["fields", name],
            )

    if target.validation:
        document = deal.document()
        document["fields"] = merged
        for j, rule in enumerate(target.validation):
            try:
                ok = holds(rule.expr, document)
                reason = rule.message or f"{to_stage!r} requires {rule.expr}"
            except ExpressionError as exc:
                ok = False
                reason = rule.message or f"{to_stage!r} requires {rule.expr} ({exc})"
            if not ok:
                refuse("validation_failed", reason, ["validation", j])

    return problems


def status_for(problems: list[Problem]) -> int:
    """The HTTP status for refusals: 422 when the deal's data is lacking, otherwise 409.

    (200 for an empty list: nothing refused.)
    """
    if not problems:
        return 200
    if any(p.code in DATA_PROBLEMS for p in problems):
        return 422
    return 409


def needs_approval(spec: PipelineSpec, to_stage: str) -> ApprovalSpec | None:
    """The approval entering ``to_stage`` needs, if any."""
    stage = spec.stage(to_stage)
    return None if stage is None else stage.approval


def approval_outcome(pending: PendingApproval) -> Literal["approved", "rejected", "pending"]:
    """Where an approval stands given its decisions so far (in the order they were made).

    Only the first decision of each eligible subject counts. ``any``: the first decision decides
    (one approval approves, one rejection rejects). ``all``: one rejection rejects; it is approved
    once every approver has approved. After an escalation, a subject in ``escalated_to`` who is not
    one of the approvers decides alone, in either mode.
    """
    approvers = set(pending.approvers)
    escalation = set(getattr(pending, "escalated_to", None) or ()) - approvers
    first: dict[str, str] = {}
    for decision in pending.decisions:
        subject = decision.subject
        if subject in first or subject not in approvers | escalation:
            continue
        first[subject] = decision.decision
        if pending.mode == "any" or subject in escalation or decision.decision == "reject":
            return "approved" if decision.decision == "approve" else "rejected"
    if approvers and all(first.get(a) == "approve" for a in approvers):
        return "approved"
    return "pending"


def probability_of(spec: PipelineSpec, stage: str) -> float | None:
    """The win probability (0-100) the pipeline gives ``stage``; ``None`` for an unknown stage."""
    found = spec.stage(stage)
    return None if found is None else found.probability
