"""The event store's processing side: dead letters, replays, discards, poison handoffs and
reconciliation, as plain functions (used by the API) and as activities (used by workflows).

Statuses: ``accepted`` (stored, waiting for the relay) → ``queued`` (claimed by a relay, being
handed over) → ``processing`` (in its deal workflow's durable inbox) → ``processed`` |
``failed`` (a business refusal: final) | ``dead_lettered`` (a processing error: replayable).
An operator's replay puts a dead letter back to ``accepted`` with ``replays + 1`` (the deal
workflow dedups on ``event_id#replays``, so it applies it once more, exactly once); a discard
makes it ``failed`` (final; the contract's statuses have no other final one for it), its
``last_error`` saying who discarded it and why. Every step is a row in ``event_attempts``;
every operator action an ``audit_log`` entry with who and when.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import and_, func, select, update
from sqlmodel import Session
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from activities.alerts import DEAD_LETTERS, EVENT_PROCESSING, EVENTS_TOTAL, Alerter, RaisedAlert
from store.db import Database
from store.models import AuditEntry, Deal, Event, EventAttempt
from store.types import utcnow
from workflows.messages import RecordInput, deal_workflow_id

log = logging.getLogger("dealflow.events")

FINAL = ("processed", "failed")
STUCK = ("queued", "processing")
WAITING = ("accepted", "queued")  # not yet handed to a deal workflow

# --------------------------------------------------------------------------- messages


class DeadLetterItem(BaseModel):
    event_id: str
    error: str
    stage: str = "processing"  # handoff | processing
    data: dict[str, Any] = Field(default_factory=dict)


class DeadLetterInput(BaseModel):
    items: list[DeadLetterItem]


class ReplayFilter(BaseModel):
    source_id: str | None = None
    type: str | None = None
    deal_id: str | None = None
    error_contains: str | None = None
    limit: int | None = Field(None, ge=1, le=100_000)


class ReplayBatchInput(BaseModel):
    filter: ReplayFilter
    after: str = ""
    batch: int
    actor: str | None = None
    replay_id: str


class ReplayBatchResult(BaseModel):
    replayed: list[str]
    skipped: int = 0
    last_id: str = ""
    exhausted: bool = False


class ReconcileInput(BaseModel):
    stuck_after_seconds: float
    deals_limit: int = 1000
    query_limit: int = 200
    """Open deals whose workflow is queried per run (a random sample). A query of a workflow out
    of the worker's cache replays its history, so each run asks a bounded few, four at a time,
    to leave the worker to the deals."""


class ReconcileReport(BaseModel):
    requeued: int = 0
    requeued_ids: list[str] = Field(default_factory=list)
    stuck_accepted: int = 0
    deals_checked: int = 0
    deals_behind: int = 0
    deals_repaired: list[str] = Field(default_factory=list)
    dead_letters: int = 0
    outcomes_recovered: int = 0  # lost outcomes written again from the workflows' records
    recovered_ids: list[str] = Field(default_factory=list)
    history_restored: int = 0  # lost history entries written again
    history_repaired: list[str] = Field(default_factory=list)
    history_unrecoverable: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- store functions


def _stage_dead_letter_alerts(
    session: Session,
    alerter: Alerter,
    errors: dict[str, tuple[str, dict[str, Any]]],
    replays: dict[str, int],
) -> list[RaisedAlert | None]:
    """An ``event.dead_lettered`` alert for each event dead-lettered in this transaction (error
    and extra data by event id), keyed ``event.dead_lettered:{event_id}#{replays}``."""
    return [
        alerter.stage(
            session,
            "event.dead_lettered",
            f"event.dead_lettered:{event_id}#{replays.get(event_id, 0)}",
            f"event {event_id} dead-lettered: {error}",
            {"event_id": event_id, "error": error, **extra},
        )
        for event_id, (error, extra) in errors.items()
    ]


def dead_letter(
    db: Database, items: list[DeadLetterItem], alerter: Alerter | None = None
) -> list[str]:
    """Dead-letter events not yet final; returns the ones that became dead letters now. Their
    alerts are raised in the same transaction."""
    alerter = alerter or Alerter()
    now = utcnow()
    newly: list[str] = []
    replays: dict[str, int] = {}
    with db.session() as session:
        for item in items:
            moved = session.execute(
                update(Event)
                .where(
                    Event.id == item.event_id,  # type: ignore[arg-type]
                    Event.status.notin_([*FINAL, "dead_lettered"]),  # type: ignore[attr-defined]
                )
                .values(
                    status="dead_lettered",
                    last_error=item.error[:4000],
                    processed_at=now,
                    attempts=Event.attempts + 1,
                )
                .returning(Event.replays)
            ).first()
            if moved is not None:
                newly.append(item.event_id)
                replays[item.event_id] = moved[0]
                session.add(
                    EventAttempt(
                        event_id=item.event_id,
                        at=now,
                        kind=item.stage,
                        error=item.error[:4000],
                        data=item.data,
                    )
                )
        by_id = {item.event_id: item for item in items}
        raised = _stage_dead_letter_alerts(
            session,
            alerter,
            {
                event_id: (
                    by_id[event_id].error,
                    {"stage": by_id[event_id].stage, **_ids(by_id[event_id].data)},
                )
                for event_id in newly
            },
            replays,
        )
        session.commit()
    alerter.announce(raised)
    return newly


def _ids(data: dict[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in ("workflow_id", "run_id") if k in data}


def record_handoff_failures(
    db: Database, event_ids: list[str], error: str, max_attempts: int
) -> list[str]:
    """Count a failed handoff on each event still waiting for it (``accepted``, or ``queued``:
    claimed by the relay that failed); those that failed
    ``max_attempts`` times are dead-lettered (a poison event must not block its deal forever).
    Returns the ids dead-lettered now."""
    if not event_ids:
        return []
    now = utcnow()
    error = error[:4000]
    message = error if max_attempts == 1 else f"handoff failed {max_attempts} times: {error}"
    with db.session() as session:
        rows = session.execute(
            update(Event)
            .where(Event.id.in_(event_ids), Event.status.in_(WAITING))  # type: ignore[attr-defined]
            .values(attempts=Event.attempts + 1, last_error=error)
            .returning(Event.id, Event.attempts, Event.replays)
        ).all()
        poison = [event_id for event_id, attempts, _ in rows if attempts >= max_attempts]
        for event_id, attempts, _ in rows:
            session.add(
                EventAttempt(
                    event_id=event_id,
                    at=now,
                    kind="handoff",
                    error=error,
                    data={"attempt": attempts},
                )
            )
        if poison:
            session.execute(
                update(Event)
                .where(Event.id.in_(poison), Event.status.in_(WAITING))  # type: ignore[attr-defined]
                .values(status="dead_lettered", processed_at=now)
            )
            for event_id in poison:
                session.add(
                    EventAttempt(event_id=event_id, at=now, kind="dead_lettered", error=message)
                )
        alerter = Alerter()
        raised = _stage_dead_letter_alerts(
            session,
            alerter,
            {event_id: (message, {"stage": "handoff"}) for event_id in poison},
            {event_id: n for event_id, _, n in rows},
        )
        session.commit()
    alerter.announce(raised)
    return poison


class NotDeadLettered(Exception):
    def __init__(self, event_id: str, status: str | None) -> None:
        super().__init__(event_id)
        self.event_id = event_id
        self.status = status


def _leave_dead_letters(
    session: Session,
    event_id: str,
    values: dict[str, Any],
    *,
    kind: str,
    action: str,
    actor: str | None,
    data: dict[str, Any],
) -> None:
    """Move one dead letter on (``values``), with its attempt row and audit entry, and commit;
    ``NotDeadLettered`` if it is not one (any more)."""
    now = utcnow()
    result = session.execute(
        update(Event)
        .where(Event.id == event_id, Event.status == "dead_lettered")  # type: ignore[arg-type]
        .values(**values)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        row = session.get(Event, event_id)
        raise NotDeadLettered(event_id, row.status if row else None)
    session.add(EventAttempt(event_id=event_id, at=now, kind=kind, actor=actor, data=data))
    session.add(AuditEntry(at=now, actor=actor, action=action, target=event_id, data=data))
    session.commit()


def _replay(session: Session, event_id: str, actor: str | None, replay_id: str | None) -> None:
    _leave_dead_letters(
        session,
        event_id,
        {"status": "accepted", "replays": Event.replays + 1, "queued_at": None},
        kind="replayed",
        action="dead_letter.replay",
        actor=actor,
        data={"replay_id": replay_id} if replay_id else {},
    )


def replay(
    db: Database, event_id: str, actor: str | None, *, replay_id: str | None = None
) -> Event:
    """Put one dead letter back to ``accepted`` (the relay hands it over again)."""
    with db.session() as session:
        _replay(session, event_id, actor, replay_id)
        row = session.get(Event, event_id)
        assert row is not None
        return row


def discard(db: Database, event_id: str, actor: str | None, reason: str) -> Event:
    with db.session() as session:
        _leave_dead_letters(
            session,
            event_id,
            {
                "status": "failed",
                "last_error": f"discarded by {actor or 'an operator'}: {reason}"[:4000],
            },
            kind="discarded",
            action="dead_letter.discard",
            actor=actor,
            data={"reason": reason},
        )
        row = session.get(Event, event_id)
        assert row is not None
        return row


def filtered(query: Any, f: ReplayFilter) -> Any:
    query = query.where(Event.status == "dead_lettered")
    if f.source_id:
        query = query.where(Event.source_id == f.source_id)
    if f.type:
        query = query.where(Event.type == f.type)
    if f.deal_id:
        query = query.where(Event.deal_id == f.deal_id)
    if f.error_contains:
        query = query.where(Event.last_error.contains(f.error_contains))  # type: ignore[union-attr]
    return query


def replay_batch(db: Database, inp: ReplayBatchInput) -> ReplayBatchResult:
    query = filtered(select(Event.id), inp.filter)  # type: ignore[call-overload]
    if inp.after:
        query = query.where(Event.id > inp.after)
    query = query.order_by(Event.id).limit(inp.batch)
    with db.session() as session:
        ids = [r[0] for r in session.execute(query).all()]
    replayed: list[str] = []
    skipped = 0
    with db.session() as session:
        for event_id in ids:  # one commit each, as one by one
            try:
                _replay(session, event_id, inp.actor, inp.replay_id)
                replayed.append(event_id)
            except NotDeadLettered:
                skipped += 1  # discarded or replayed meanwhile
    return ReplayBatchResult(
        replayed=replayed,
        skipped=skipped,
        last_id=ids[-1] if ids else inp.after,
        exhausted=len(ids) < inp.batch,
    )


def count_dead_letters(db: Database) -> int:
    with db.session() as session:
        return int(
            session.execute(
                select(func.count()).select_from(Event).where(Event.status == "dead_lettered")
            ).scalar_one()
        )


def stuck_before(older_than: datetime) -> Any:
    """Handed over (``queued`` or ``processing``) before ``older_than``, still without an
    outcome."""
    return and_(
        Event.status.in_(STUCK),  # type: ignore[attr-defined]
        func.coalesce(Event.queued_at, Event.received_at) < older_than,
    )


def requeue_stuck(db: Database, older_than: datetime) -> tuple[list[str], int]:
    """Events handed over but without an outcome since ``older_than`` go back to ``accepted``
    (the relay re-sends them; the deal workflow drops what it has seen). Returns the ids and
    how many events wait as ``accepted`` longer than that (the relay is not running)."""
    now = utcnow()
    with db.session() as session:
        ids = [
            r[0]
            for r in session.execute(
                select(Event.id).where(stuck_before(older_than))  # type: ignore[call-overload]
            ).all()
        ]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            session.execute(
                update(Event)
                .where(Event.id.in_(chunk), Event.status.in_(STUCK))  # type: ignore[attr-defined]
                .values(status="accepted")
            )
            session.add_all(
                [
                    EventAttempt(event_id=i, at=now, kind="requeued", actor="reconcile")
                    for i in chunk
                ]
            )
        waiting = int(
            session.execute(
                select(func.count())
                .select_from(Event)
                .where(Event.status == "accepted", Event.received_at < older_than)
            ).scalar_one()
        )
        session.commit()
    return ids, waiting


def attempts_of(db: Database, event_id: str) -> list[EventAttempt]:
    with db.session() as session:
        return list(
            session.execute(
                select(EventAttempt)
                .where(EventAttempt.event_id == event_id)
                .order_by(EventAttempt.id)  # type: ignore[arg-type]
            ).scalars()
        )


# --------------------------------------------------------------------------- activities


class EventActivities:
    def __init__(self, db: Database, alerter: Alerter, client: Client | None = None) -> None:
        self.db = db
        self.alerter = alerter
        self.client = client

    @activity.defn(name="dead_letter_events")
    def dead_letter_events(self, inp: DeadLetterInput) -> int:
        info = activity.info()
        for item in inp.items:
            item.data.setdefault("workflow_id", info.workflow_id)
            item.data.setdefault("run_id", info.workflow_run_id)
        newly = dead_letter(self.db, inp.items, self.alerter)
        EVENTS_TOTAL.labels("dead_lettered").inc(len(newly))
        return len(newly)

    @activity.defn(name="replay_dead_letters")
    def replay_dead_letters(self, inp: ReplayBatchInput) -> ReplayBatchResult:
        return replay_batch(self.db, inp)

    @activity.defn(name="requeue_stuck_events")
    def requeue_stuck_events(self, inp: ReconcileInput) -> ReconcileReport:
        cutoff = utcnow() - timedelta(seconds=inp.stuck_after_seconds)
        ids, waiting = requeue_stuck(self.db, cutoff)
        if ids:
            log.warning("reconcile: %d stuck events re-queued", len(ids))
        return ReconcileReport(
            requeued=len(ids),
            requeued_ids=ids[:100],
            stuck_accepted=waiting,
            dead_letters=count_dead_letters(self.db),
        )

    @activity.defn(name="reconcile_deals")
    async def reconcile_deals(self, inp: ReconcileInput) -> ReconcileReport:
        """Compare each open deal's read-model revision with its workflow's state (a query);
        a read model behind is rewritten from the workflow's state (only if still newer)."""
        import asyncio

        assert self.client is not None
        rows = await asyncio.to_thread(self._open_deals, inp.query_limit)
        report = ReconcileReport(deals_checked=len(rows))
        sem = asyncio.Semaphore(4)

        async def check(deal_id: str, revision: int) -> None:
            async with sem:
                handle = self.client.get_workflow_handle(deal_workflow_id(deal_id))  # type: ignore[union-attr]
                try:
                    desc = await handle.describe(rpc_timeout=timedelta(seconds=5))
                    if desc.status != WorkflowExecutionStatus.RUNNING:
                        return  # closed: the read model is what it recorded last
                    state = await handle.query("state", rpc_timeout=timedelta(seconds=5))
                except RPCError:
                    return  # closed or not found: the read model is what it recorded last
                except Exception as exc:  # a query a busy worker did not answer
                    log.info("reconcile: deal %s not queried: %s", deal_id, exc)
                    return
            if isinstance(state, dict) and int(state.get("revision", -1)) > revision:
                report.deals_behind += 1
                await asyncio.to_thread(self._repair, state)
                report.deals_repaired.append(deal_id)

        await asyncio.gather(*[check(d, r) for d, r in rows])
        activity.heartbeat()
        return report

    def _open_deals(self, limit: int) -> list[tuple[str, int]]:
        """A random sample of open deals: a row behind its workflow is one whose last write
        was lost, so it is an old row, not a recent one; over a few runs every deal is seen."""
        with self.db.session() as session:
            return [
                (r[0], r[1])
                for r in session.execute(
                    select(Deal.deal_id, Deal.revision)  # type: ignore[call-overload]
                    .where(Deal.status == "open")
                    .order_by(func.random())
                    .limit(limit)
                ).all()
            ]

    def _repair(self, state: dict[str, Any]) -> None:
        from activities.deals import _write_deal
        from domain.engine import EngineState

        inp = RecordInput(state=EngineState.model_validate(state))
        with self.db.session() as session:
            _write_deal(session, inp, utcnow())
            session.commit()


def observed_record_deal(deals: Any) -> Any:
    """``record_deal`` with the processing metrics: outcomes by kind and received → recorded."""

    @activity.defn(name="record_deal")
    def record_deal(inp: RecordInput) -> None:
        waited = deals.record_deal(inp)
        kinds = [o.status for o in inp.outcomes]
        for kind in set(kinds):
            EVENTS_TOTAL.labels(kind).inc(kinds.count(kind))
        for seconds in waited:
            EVENT_PROCESSING.observe(seconds)

    return record_deal


def watch_dead_letters(db: Database) -> None:
    """``dealflow_dead_letters`` counts the table at each scrape."""

    def current() -> float:
        try:
            return float(count_dead_letters(db))
        except Exception:
            return float("nan")

    DEAD_LETTERS.set_function(current)


def processing_activities(client: Client, db: Database, deals: Any) -> list[Any]:
    """The worker's event-processing activities (``record_deal`` included, with its metrics)."""
    events = EventActivities(db, Alerter(), client)
    return [
        observed_record_deal(deals),
        events.dead_letter_events,
        events.replay_dead_letters,
        events.requeue_stuck_events,
        events.reconcile_deals,
        *_repairs(db, client),
    ]


def _repairs(db: Database, client: Client) -> list[Any]:
    from activities.repair import RepairActivities  # it imports this module

    repair = RepairActivities(db, client)
    return [repair.recover_stuck_outcomes, repair.restore_deal_history]


def _workflows() -> list[Any]:
    from workflows.reconcile import ReconcileWorkflow
    from workflows.replay import DeadLetterReplayWorkflow

    return [DeadLetterReplayWorkflow, ReconcileWorkflow]


PROCESSING_WORKFLOWS = _workflows()
