"""The relay: hands stored events to their deal workflows, batched per deal.

Runs in every API process. A pass claims the oldest events still ``accepted`` (they become
``queued``: claimed by this relay, one conditional UPDATE, so several API processes never send
the same event twice), groups them by deal, sends one signal-with-start per deal carrying the
whole batch, and marks what Temporal took ``processing`` (it is in its deal workflow's durable
inbox; the workflow records the outcome). What could not be handed over goes back to
``accepted``. If the relay dies between claim and mark, the claim expires after
``CLAIM_LEASE`` and another pass sends the events again; the workflow drops the ids it has
seen. Events accepted while Temporal is down wait in the table until it is back: a 202 is
never lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import bindparam, func, select, update
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from activities.events import WAITING, record_handoff_failures
from api.metrics import HANDED_OFF, PENDING_HANDOFF
from domain.events import DealEvent
from domain.sizes import PAYLOAD_BUDGET_BYTES
from store import links
from store.db import Database
from store.events import EVENTS, claim, mark_processing, release
from store.models import Event
from workflows.messages import DealInput, EventBatch, deal_workflow_id
from workflows.search import DEAL_ID

log = logging.getLogger("dealflow.relay")
CONCURRENCY = 32


class NotConnected(RuntimeError):
    pass


@dataclass(frozen=True)
class Pending:
    id: str
    source_id: str
    type: str
    deal_id: str | None
    payload: dict[str, Any]
    received_at: datetime
    replays: int = 0


CLAIM_LEASE = timedelta(seconds=30)
"""How long a relay's claim on events holds before another pass may take them over."""


def pending_events(db: Database, limit: int) -> list[Pending]:
    """Claim the oldest events not yet handed over (only the columns the handoff needs)."""
    rows = claim(db, limit, datetime.now(UTC), CLAIM_LEASE)
    return [Pending(**row) for row in rows]


def resolve_deals(db: Database, events: list[Pending]) -> tuple[list[Pending], dict[str, str]]:
    """Enrichment: the deal of each event that names it by ``deal_ref``, from the deal links,
    also written to the event's row (its status shows the deal). Returns the events with
    their deals, and the reason for each event whose reference names no deal."""
    refs = {e.id: ref for e in events if e.deal_id is None and (ref := links.ref_of(e.payload))}
    if not refs:
        return events, {}
    with db.engine.begin() as conn:
        found = links.resolve(conn, refs.values())
        deals = {event_id: found[ref] for event_id, ref in refs.items() if ref in found}
        if deals:
            conn.execute(
                update(EVENTS)
                .where(EVENTS.c.id == bindparam("event_id"))
                .values(deal_id=bindparam("deal")),
                [{"event_id": event_id, "deal": deal} for event_id, deal in deals.items()],
            )
    unresolved = {
        event_id: f"no deal is linked to {ns} '{ext}' (deal_ref); a deal declares it in "
        "external_ids"
        for event_id, (ns, ext) in refs.items()
        if event_id not in deals
    }
    return [
        replace(e, deal_id=deals[e.id]) if e.id in deals else e
        for e in events
        if e.id not in unresolved
    ], unresolved


def count_pending(db: Database) -> int:
    with db.session() as session:
        return int(
            session.execute(
                select(func.count()).select_from(Event).where(Event.status.in_(WAITING))  # type: ignore[attr-defined]
            ).scalar_one()
        )


class Relay:
    def __init__(
        self,
        db: Database,
        client_getter,  # type: ignore[no-untyped-def]
        *,
        task_queue: str,
        batch_size: int = 500,
        interval_s: float = 0.2,
        max_attempts: int = 5,
    ) -> None:
        self.max_attempts = max_attempts
        self.db = db
        self.client_getter = client_getter
        self.task_queue = task_queue
        self.batch_size = batch_size
        self.interval_s = interval_s
        self._wake = asyncio.Event()
        self._stop = False
        self._task: asyncio.Task[None] | None = None
        self._sem = asyncio.Semaphore(CONCURRENCY)
        self._counted_at = 0.0
        self._count_due = False  # a count was skipped by the once-a-second limit
        self._warned_at = -1e9

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="relay")

    def nudge(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        backoff = self.interval_s
        while not self._stop:
            try:
                moved = await self.run_once()
                backoff = self.interval_s
                if moved >= self.batch_size:
                    continue  # more waiting: go on at once
            except asyncio.CancelledError:
                raise
            except NotConnected:
                now = time.monotonic()
                if now - self._warned_at > 30.0:
                    self._warned_at = now
                    log.warning("Temporal is not connected: accepted events wait in the store")
                backoff = min(backoff * 2, 10.0)
            except Exception as exc:
                log.warning("relay pass failed, retrying in %.1fs: %s", backoff, exc)
                backoff = min(backoff * 2, 10.0)
            try:
                # A count skipped by the once-a-second limit is made up as soon as it may be.
                timeout = min(backoff, 1.0) if self._count_due else backoff
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _count_pending(self) -> None:
        """Refresh the pending-handoff gauge, at most once a second (it is a COUNT)."""
        now = time.monotonic()
        if now - self._counted_at < 1.0:
            self._count_due = True
            return
        self._counted_at, self._count_due = now, False
        PENDING_HANDOFF.set(await asyncio.to_thread(count_pending, self.db))

    async def run_once(self) -> int:
        """One pass; returns how many events were handed over."""
        client: Client | None = self.client_getter()
        if client is None:
            # Nothing can be handed over: do not read the events (a nudge comes with every
            # 202), only keep the gauge roughly current.
            await self._count_pending()
            raise NotConnected("Temporal is not connected")
        events = await asyncio.to_thread(pending_events, self.db, self.batch_size)
        if not events:
            PENDING_HANDOFF.set(0)
            return 0
        done: list[str] = []
        try:
            events = await self._enrich(events)
            return await self._hand_over(client, events, done)
        finally:
            # Whatever Temporal did not take goes back to ``accepted`` at once (not after the
            # lease): the next pass, of this relay or another, sends it.
            handed = set(done)
            await asyncio.to_thread(release, self.db, [e.id for e in events if e.id not in handed])

    async def _enrich(self, events: list[Pending]) -> list[Pending]:
        """Events that name their deal by ``deal_ref`` get the deal it is linked to; one whose
        reference names no deal is dead-lettered at once, saying which (a replay, once the
        link exists, resolves it again). Returns the events to hand over."""
        resolved, unresolved = await asyncio.to_thread(resolve_deals, self.db, events)
        for event_id, reason in unresolved.items():
            await asyncio.to_thread(
                record_handoff_failures, self.db, [event_id], reason, max_attempts=1
            )
            log.warning("event %s dead-lettered: %s", event_id, reason)
        return resolved

    async def _hand_over(self, client: Client, events: list[Pending], done: list[str]) -> int:
        by_deal: dict[str, list[Pending]] = defaultdict(list)
        for ev in events:
            by_deal[ev.deal_id or ""].append(ev)
        results = await asyncio.gather(
            *[self._send(client, deal_id, evs) for deal_id, evs in by_deal.items()],
            return_exceptions=True,
        )
        failures = 0
        for (deal_id, evs), result in zip(by_deal.items(), results, strict=True):
            if isinstance(result, BaseException):
                if _transient(result):
                    failures += 1
                    last = result
                    continue
                stuck = await self._poison(client, deal_id, evs, result, done)
                if stuck:
                    failures += 1
                    last = result
            else:
                done.extend(e.id for e in evs)
        await asyncio.to_thread(mark_processing, self.db, done)
        HANDED_OFF.inc(len(done))
        if failures:
            self._counted_at = 0.0
            await self._count_pending()
            raise RuntimeError(f"{failures} of {len(by_deal)} deals not handed over: {last}")
        if len(events) < self.batch_size:
            PENDING_HANDOFF.set(0)
        return len(done)

    async def _poison(
        self,
        client: Client,
        deal_id: str,
        events: list[Pending],
        error: BaseException,
        done: list[str],
    ) -> int:
        """A handoff refused for this deal's batch (not a connection problem): hand the events
        over one by one, in order, to isolate the poison one; each refusal counts an attempt on
        its event, and after ``max_attempts`` it is dead-lettered instead of blocking the deal.
        Returns how many stay ``accepted``."""
        refused: list[tuple[Pending, BaseException]] = []
        if len(events) == 1:
            refused.append((events[0], error))
        else:
            for ev in events:
                try:
                    await self._send(client, deal_id, [ev])
                    done.append(ev.id)
                except Exception as exc:
                    if _transient(exc):
                        return len(events)
                    refused.append((ev, exc))
        dead = 0
        for ev, exc in refused:
            message = f"handoff refused: {type(exc).__name__}: {exc}"
            dead += len(
                await asyncio.to_thread(
                    record_handoff_failures, self.db, [ev.id], message, self.max_attempts
                )
            )
            log.warning("event %s not handed over: %s", ev.id, message)
        return len(refused) - dead

    async def _send(self, client: Client, deal_id: str, events: list[Pending]) -> None:
        """Signal-with-start the deal's workflow with its events, in order, as few signals as
        fit the payload budget (a signal over Temporal's limit would be refused whole)."""
        for piece in _pieces(events):
            await self._signal(client, deal_id, piece)

    async def _signal(self, client: Client, deal_id: str, events: list[Pending]) -> None:
        batch = EventBatch(
            events=[
                DealEvent(
                    event_id=e.id,
                    type=e.type,  # type: ignore[arg-type]
                    data=e.payload,
                    source_id=e.source_id,
                    received_at=e.received_at,
                    replay=e.replays,
                )
                for e in events
            ]
        )
        async with self._sem:
            await client.start_workflow(
                "DealWorkflow",
                DealInput(deal_id=deal_id),
                id=deal_workflow_id(deal_id),
                task_queue=self.task_queue,
                start_signal="events",
                start_signal_args=[batch],
                search_attributes=TypedSearchAttributes([SearchAttributePair(DEAL_ID, deal_id)]),
                static_summary=f"Deal {deal_id}",
            )


def _pieces(events: list[Pending]) -> list[list[Pending]]:
    """Consecutive runs of ``events`` whose payloads together fit ``PAYLOAD_BUDGET_BYTES`` (an
    event larger than that on its own goes alone)."""
    if not events:
        return []
    pieces: list[list[Pending]] = [[]]
    size = 0
    for event in events:
        own = len(orjson.dumps(event.payload)) + 200  # the envelope: ids, type, times
        if pieces[-1] and size + own > PAYLOAD_BUDGET_BYTES:
            pieces.append([])
            size = 0
        pieces[-1].append(event)
        size += own
    return pieces


TRANSIENT = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.UNKNOWN,
}


def _transient(exc: BaseException) -> bool:
    """Temporal unreachable or overloaded (retry, count nothing) vs. a refusal of the batch."""
    if isinstance(exc, RPCError):
        return exc.status in TRANSIENT
    if isinstance(exc, RuntimeError) and str(exc).startswith("Failed client connect"):
        return True  # a lazy client that cannot (re)connect: Temporal is not there
    return isinstance(exc, ConnectionError | TimeoutError | asyncio.TimeoutError)
