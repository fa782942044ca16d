"""Activities the deal workflow uses to read pipelines and write the read model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlmodel import select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from domain.activation import effective_activation, effective_version
from domain.engine import Engine, EngineState
from domain.pipeline import PipelineSnapshot, PipelineSpec
from store.db import Database
from store.models import Approval, Deal, DealHistory, Event, Pipeline, PipelineVersion
from store.upsert import insert_ignore, upsert
from workflows.messages import (
    DealContext,
    EventOutcome,
    LoadContextInput,
    LoadDealInput,
    LoadedDeal,
    LoadPipelineInput,
    RecordInput,
)


def load_snapshot(db: Database, pipeline_id: str, version: int | None = None) -> PipelineSnapshot:
    with db.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        if pipeline is None:
            raise ApplicationError(
                f"pipeline {pipeline_id} does not exist", type="not_found", non_retryable=True
            )
        now = datetime.now(UTC)
        # A new deal gets the version in effect now: a scheduled one from its go_live_at on,
        # even before the go-live timer has recorded it.
        in_effect = effective_version(
            pipeline.active_version, pipeline.scheduled_version, pipeline.go_live_at, now
        )
        wanted = version or in_effect or pipeline.current_version
        row = session.exec(
            select(PipelineVersion).where(
                PipelineVersion.pipeline_id == pipeline_id, PipelineVersion.version == wanted
            )
        ).first()
        if row is None:
            raise ApplicationError(
                f"pipeline {pipeline_id} has no version {wanted}",
                type="not_found",
                non_retryable=True,
            )
        _, test_mode = effective_activation(
            pipeline.status,
            pipeline.test_mode,
            pipeline.go_live_at,
            now,
            pipeline.scheduled_version,
        )
        return PipelineSnapshot(
            pipeline_id=pipeline_id,
            version=wanted,
            spec=PipelineSpec.model_validate(row.spec),
            test_mode=test_mode,
            go_live_at=pipeline.go_live_at,
        )


class DealActivities:
    def __init__(self, db: Database) -> None:
        self.db = db

    @activity.defn(name="load_pipeline")
    def load_pipeline(self, inp: LoadPipelineInput) -> PipelineSnapshot:
        return load_snapshot(self.db, inp.pipeline_id, inp.version)

    @activity.defn(name="load_deal_context")
    def load_deal_context(self, inp: LoadContextInput) -> DealContext:
        """``load_deal`` and the pipelines of the run's first ``deal.created`` events in one
        activity: a new deal costs one read (and one workflow task) less."""
        context = DealContext(deal=self.load_deal(LoadDealInput(deal_id=inp.deal_id)))
        if context.deal is not None:
            return context  # the deal exists: a deal.created changes nothing
        for pipeline_id in inp.pipeline_ids:
            try:
                context.pipelines[pipeline_id] = load_snapshot(self.db, pipeline_id)
            except ApplicationError as exc:
                if exc.type != "not_found":
                    raise
                context.pipeline_errors[pipeline_id] = exc.message
        return context

    @activity.defn(name="load_deal")
    def load_deal(self, inp: LoadDealInput) -> LoadedDeal | None:
        with self.db.session() as session:
            row = session.get(Deal, inp.deal_id)
            if row is None or not row.state:
                return None
            state = EngineState.model_validate(row.state)
        return LoadedDeal(
            state=state, pipeline=load_snapshot(self.db, row.pipeline_id, row.pipeline_version)
        )

    def record_deal(self, inp: RecordInput) -> list[float]:
        """One transaction: the deal row, its new history, the events' outcomes, its approvals.
        Returns, per event recorded, the seconds from its 202 to now (for the metrics)."""
        now = datetime.now(UTC)
        waited: list[float] = []
        with self.db.session() as session:
            if inp.state is not None:
                _write_deal(session, inp, now)
            for outcome in inp.outcomes:
                received = session.execute(
                    outcome_update(outcome, now).returning(Event.received_at)
                ).scalar_one_or_none()
                if received is not None:
                    waited.append(max((now - received).total_seconds(), 0.0))
            session.commit()
        return waited


def outcome_update(outcome: EventOutcome, now: datetime, *only_from: str) -> Any:
    """The UPDATE that records an event's outcome (only from the statuses ``only_from``, if
    given)."""
    query = update(Event).where(Event.id == outcome.event_id)  # type: ignore[arg-type]
    if only_from:
        query = query.where(Event.status.in_(only_from))  # type: ignore[attr-defined]
    return query.values(
        status=outcome.status,
        last_error=outcome.error,
        processed_at=now,
        attempts=Event.attempts + 1,
    )


def _write_deal(session, inp: RecordInput, now: datetime) -> None:  # type: ignore[no-untyped-def]
    state = inp.state
    assert state is not None
    deal = state.deal
    row = {
        "deal_id": deal.deal_id,
        "pipeline_id": deal.pipeline_id,
        "pipeline_version": deal.pipeline_version,
        "stage": deal.stage,
        "stage_entered_at": deal.stage_entered_at,
        "status": deal.status,
        "title": deal.title,
        "value": deal.value,
        "currency": deal.currency,
        "owner": deal.owner,
        "fields": deal.fields,
        "is_rotting": deal.is_rotting,
        "sla": deal.sla.model_dump(mode="json") if deal.sla else None,
        "pending_approval": (
            deal.pending_approval.model_dump(mode="json") if deal.pending_approval else None
        ),
        "state": state.model_dump(mode="json"),
        "revision": state.revision,
        "created_at": deal.created_at,
        "updated_at": now,
    }
    upsert(session, Deal, row, ["deal_id"], newer_than="revision")
    insert_ignore(
        session,
        DealHistory,
        [
            {
                "deal_id": deal.deal_id,
                "seq": h.seq,
                "at": h.at,
                "kind": h.kind,
                "data": h.model_dump(mode="json")["data"],
            }
            for h in inp.history
        ],
        ["deal_id", "seq"],
    )
    # Every approval requested gets its row, even one resolved or withdrawn in the same batch.
    insert_ignore(
        session,
        Approval,
        [
            {
                "id": h.data["approval_id"],
                "deal_id": deal.deal_id,
                "from_stage": h.data.get("from") or "",
                "to_stage": h.data["to"],
                "approvers": list(h.data.get("approvers") or []),
                "mode": h.data.get("mode") or "any",
                "status": "pending",
                "decisions": [],
                "requested_by": h.data.get("by"),
                "requested_at": h.at,
                "due_at": datetime.fromisoformat(h.data["due_at"])
                if h.data.get("due_at")
                else None,
                "decided_at": None,
            }
            for h in inp.history
            if h.kind == "approval_requested"
        ],
        ["id"],
    )
    pending = deal.pending_approval
    if pending is not None:
        upsert(
            session,
            Approval,
            {
                "id": pending.approval_id,
                "deal_id": deal.deal_id,
                "from_stage": pending.from_stage,
                "to_stage": pending.to_stage,
                "approvers": Engine.eligible_approvers(pending),
                "mode": pending.mode,
                "status": "pending",
                "decisions": [d.model_dump(mode="json") for d in pending.decisions],
                "requested_by": pending.requested_by,
                "requested_at": pending.requested_at,
                "due_at": pending.due_at,
                "decided_at": None,
            },
            ["id"],
        )
    for h in inp.history:
        if h.kind in ("approval_resolved", "approval_withdrawn"):
            status = h.data.get("status", "withdrawn")
            session.execute(
                update(Approval)
                .where(Approval.id == h.data["approval_id"])  # type: ignore[arg-type]
                .values(status=status, decided_at=h.at)
            )
        elif h.kind == "approval_decision":
            approval = session.get(Approval, h.data["approval_id"])
            if approval is not None and not any(
                d.get("subject") == h.data["by"] for d in approval.decisions
            ):
                approval.decisions = [
                    *approval.decisions,
                    {
                        "subject": h.data["by"],
                        "decision": h.data["decision"],
                        "comment": h.data.get("comment"),
                        "at": h.at.isoformat(),
                    },
                ]
                session.add(approval)
