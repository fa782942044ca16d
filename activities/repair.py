"""Repairs of the read model from Temporal's own record.

Every write a deal workflow makes to the database goes through an activity (``record_deal``:
the deal row, its history entries, the events' outcomes; ``dead_letter_events``), and every
activity's input is kept in the workflow's history. So rows the database lost — a restore from
an older backup, a write that failed after the workflow moved on — can be written again from
there, idempotently: history entries are keyed by (deal, seq), outcomes only land on events
still without one, the deal row only if it is newer.

Runs of a deal are walked back through continue-as-new (each run's first event names the run
it continues), so entries recorded by earlier runs are found too, as long as Temporal keeps
those runs (the namespace's retention).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.service import RPCError

from activities.deals import outcome_update
from activities.events import (
    STUCK,
    DeadLetterInput,
    DeadLetterItem,
    ReconcileInput,
    ReconcileReport,
    dead_letter,
    stuck_before,
)
from store.db import Database
from store.models import Deal, DealHistory, Event
from store.types import utcnow
from store.upsert import insert_ignore
from workflows.messages import EventOutcome, RecordInput, deal_workflow_id

log = logging.getLogger("dealflow.repair")

SCHEDULED = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
STARTED = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
MAX_RUNS = 50
"""How many runs back a repair looks (a deal continues as new every few thousand events)."""


@dataclass
class Recorded:
    """What a deal's workflow runs asked to be written, oldest run first."""

    records: list[RecordInput] = field(default_factory=list)
    dead_letters: list[DeadLetterItem] = field(default_factory=list)
    runs: int = 0

    def outcomes(self) -> dict[str, EventOutcome]:
        """The last outcome recorded for each event id."""
        found: dict[str, EventOutcome] = {}
        for record in self.records:
            for outcome in record.outcomes:
                found[outcome.event_id] = outcome
        return found


async def recorded(client: Client, deal_id: str) -> Recorded:
    """Every ``record_deal`` and ``dead_letter_events`` input of the deal's runs."""
    found = Recorded()
    runs: list[tuple[list[RecordInput], list[DeadLetterItem]]] = []
    run_id: str | None = None
    converter = client.data_converter
    for _ in range(MAX_RUNS):
        handle = client.get_workflow_handle(deal_workflow_id(deal_id), run_id=run_id)
        records: list[RecordInput] = []
        dead: list[DeadLetterItem] = []
        previous = ""
        try:
            async for ev in handle.fetch_history_events():
                if ev.event_type == STARTED:
                    previous = (
                        ev.workflow_execution_started_event_attributes.continued_execution_run_id
                    )
                elif ev.event_type == SCHEDULED:
                    attrs = ev.activity_task_scheduled_event_attributes
                    name = attrs.activity_type.name
                    if name == "record_deal":
                        (inp,) = await converter.decode(attrs.input.payloads, [RecordInput])
                        records.append(inp)
                    elif name == "dead_letter_events":
                        (items,) = await converter.decode(attrs.input.payloads, [DeadLetterInput])
                        dead.extend(items.items)
        except RPCError as exc:  # no such workflow, or a run past retention
            log.info("repair: deal %s run %s not readable: %s", deal_id, run_id or "latest", exc)
            break
        runs.append((records, dead))
        if not previous:
            break
        run_id = previous
    for records, dead in reversed(runs):
        found.records.extend(records)
        found.dead_letters.extend(dead)
    found.runs = len(runs)
    return found


def restore_history(db: Database, deal_id: str, found: Recorded) -> int:
    """Write the history entries the table lacks; returns how many were missing."""
    rows = {
        h.seq: {
            "deal_id": deal_id,
            "seq": h.seq,
            "at": h.at,
            "kind": h.kind,
            "data": h.model_dump(mode="json")["data"],
        }
        for record in found.records
        for h in record.history
    }

    ordered = [rows[seq] for seq in sorted(rows)]
    with db.session() as session:
        written = sum(
            insert_ignore(session, DealHistory, ordered[start : start + 500], ["deal_id", "seq"])
            for start in range(0, len(ordered), 500)
        )
        session.commit()
    return written


def restore_outcomes(
    db: Database, found: Recorded, event_ids: set[str], unfinished: tuple[str, ...]
) -> list[str]:
    """Give the events among ``event_ids`` still ``unfinished`` the outcome their workflow
    recorded (or the dead-lettering); returns the ids restored."""
    now = utcnow()
    restored: list[str] = []
    outcomes = found.outcomes()
    with db.session() as session:
        for event_id in sorted(event_ids & set(outcomes)):
            outcome = outcomes[event_id]
            done = session.execute(outcome_update(outcome, now, *unfinished)).rowcount  # type: ignore[attr-defined]
            if done:
                restored.append(event_id)
        session.commit()
    items = [
        i for i in found.dead_letters if i.event_id in event_ids and i.event_id not in outcomes
    ]
    if items:
        restored.extend(dead_letter(db, items))
    return restored


# --------------------------------------------------------------------------- activities


class RepairActivities:
    """Reconciliation's repairs that read Temporal (``ReconcileWorkflow`` runs them)."""

    def __init__(self, db: Database, client: Client) -> None:
        self.db = db
        self.client = client

    @activity.defn(name="recover_stuck_outcomes")
    async def recover_stuck_outcomes(self, inp: ReconcileInput) -> ReconcileReport:
        """Events handed over long ago and still without an outcome: if their deal's workflow
        recorded one (the write was lost), it is written again; the rest are left for the
        re-queue that follows."""
        cutoff = utcnow() - timedelta(seconds=inp.stuck_after_seconds)
        stuck = await asyncio.to_thread(stuck_by_deal, self.db, cutoff, inp.deals_limit)
        report = ReconcileReport()
        for deal_id, event_ids in stuck.items():
            found = await recorded(self.client, deal_id)
            restored = await asyncio.to_thread(
                restore_outcomes, self.db, found, set(event_ids), STUCK
            )
            report.outcomes_recovered += len(restored)
            report.recovered_ids.extend(restored[: max(0, 100 - len(report.recovered_ids))])
            activity.heartbeat()
        if report.outcomes_recovered:
            log.warning("reconcile: %d lost outcomes written again", report.outcomes_recovered)
        return report

    @activity.defn(name="restore_deal_history")
    async def restore_deal_history(self, inp: ReconcileInput) -> ReconcileReport:
        """Open deals whose history table has fewer entries than their state counts get the
        missing ones back from their workflow's records; a deal whose entries cannot be found
        any more (its runs are past retention) is reported."""
        gaps = await asyncio.to_thread(history_gaps, self.db, inp.deals_limit)
        report = ReconcileReport()
        for deal_id, missing in gaps.items():
            found = await recorded(self.client, deal_id)
            written = await asyncio.to_thread(restore_history, self.db, deal_id, found)
            report.history_restored += written
            if written:
                report.history_repaired.append(deal_id)
            if written < missing:
                report.history_unrecoverable.append(deal_id)
            activity.heartbeat()
        if report.history_restored:
            log.warning(
                "reconcile: %d history entries of %d deals written again",
                report.history_restored,
                len(report.history_repaired),
            )
        return report


def stuck_by_deal(db: Database, older_than: datetime, limit: int) -> dict[str, list[str]]:
    """Events handed over before ``older_than`` without an outcome, by deal (at most ``limit``
    deals)."""
    with db.session() as session:
        rows = session.execute(
            select(Event.id, Event.deal_id)  # type: ignore[call-overload]
            .where(stuck_before(older_than), Event.deal_id.is_not(None))  # type: ignore[union-attr]
            .order_by(Event.received_at)
            .limit(50_000)
        ).all()
    by_deal: dict[str, list[str]] = {}
    for event_id, deal_id in rows:
        if deal_id in by_deal or len(by_deal) < limit:
            by_deal.setdefault(deal_id, []).append(event_id)
    return by_deal


def history_gaps(db: Database, limit: int) -> dict[str, int]:
    """Open deals (a random sample of ``limit``: a loss hits old rows as well as new ones)
    whose history rows are fewer than their state's entry count: how many are missing."""
    with db.session() as session:
        sample = session.execute(
            select(Deal.deal_id, Deal.state)  # type: ignore[call-overload]
            .where(Deal.status == "open")
            .order_by(func.random())
            .limit(limit)
        ).all()
        counts: dict[str, int] = {}
        ids = [deal_id for deal_id, _ in sample]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            counts.update(
                session.execute(
                    select(DealHistory.deal_id, func.count())  # type: ignore[call-overload]
                    .where(DealHistory.deal_id.in_(chunk))  # type: ignore[attr-defined]
                    .group_by(DealHistory.deal_id)
                ).all()
            )
    gaps: dict[str, int] = {}
    for deal_id, state in sample:
        expected = int((state or {}).get("history_seq", 0))
        have = counts.get(deal_id, 0)
        if have < expected:
            gaps[deal_id] = expected - have
    return gaps
