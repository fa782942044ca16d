"""Alerts, durable: an outbox in the database, delivered by every worker; and the processing
metrics of the worker process.

Raising an alert inserts a row into the ``alerts`` table (``INSERT … ON CONFLICT (key) DO
NOTHING``) in the same transaction as the change that caused it, where there is one, so a crash
cannot lose it, and an activity retried or a second worker seeing the same thing cannot double
it: the key names the occurrence (``event.dead_lettered:{event_id}#{replays}``,
``circuit.opened:{integration}:{opened_at}``, ``events.failure_rate:{window number}``). Only a
new row is logged (WARNING) and counted (``dealflow_alerts{kind}``), once it is committed.

Every worker process runs an ``AlertDispatcher`` (a thread, started and stopped with the worker).
About once a second it looks for due ``pending`` rows (one indexed query) and claims each with a
conditional UPDATE that moves its ``next_attempt_at`` past a lease, so two workers never send the
same row at once, and the row of a worker that died mid-send is due again when the lease ends.
It POSTs the alert as JSON to ``DEALFLOW_ALERT_WEBHOOK_URL``, signed the Standard Webhooks way
with ``DEALFLOW_ALERT_WEBHOOK_SECRET``; ``webhook-id`` is the alert's id, the same on every
attempt, so a receiver dedups on it. A 2xx marks the row ``delivered``; anything else schedules
the next attempt 1 s · 2^n later (at most an hour apart), and after ``DEALFLOW_ALERT_MAX_ATTEMPTS``
attempts the row is ``abandoned`` (logged at ERROR). Without a URL the log is the channel: due
rows are marked delivered.

Every few seconds the dispatcher also reads, from the events table, the outcomes recorded in the
last ``DEALFLOW_ALERT_FAILURE_WINDOW`` (``processed`` against ``failed`` and ``dead_lettered``,
counting a dead letter discarded since as a failure): with at least
``DEALFLOW_ALERT_FAILURE_MIN_EVENTS`` outcomes and a failed share of at least
``DEALFLOW_ALERT_FAILURE_RATE`` it raises ``events.failure_rate``, keyed by the number of the
window since the epoch, so all workers together raise it at most once a window.

Kinds: ``event.dead_lettered``, ``circuit.opened``, ``events.failure_rate``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import func, select, update
from sqlmodel import Session

from dealflow.settings import Settings
from domain.signatures import sign
from store.db import Database
from store.models import Alert, Event
from store.types import utcnow
from store.upsert import insert_ignore

log = logging.getLogger("dealflow.alerts")

EVENT_PROCESSING = Histogram(
    "dealflow_event_processing_seconds",
    "Time from an event's 202 (received_at) to its outcome being recorded.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800),
)
EVENTS_TOTAL = Counter(
    "dealflow_events_total",
    "Events whose outcome was recorded, by outcome (processed, failed, dead_lettered).",
    ["outcome"],
)
DEAD_LETTERS = Gauge("dealflow_dead_letters", "Events currently dead-lettered.")
CIRCUIT_STATE = Gauge(
    "dealflow_circuit_state",
    "Circuit breaker of an integration endpoint: 0 closed, 0.5 half-open, 1 open.",
    ["integration"],
)
ALERTS_SENT = Counter("dealflow_alerts", "Alerts raised (new outbox rows), by kind.", ["kind"])
ALERT_DELIVERIES = Counter(
    "dealflow_alert_deliveries_total",
    "Alert delivery attempts, by result (delivered, failed: to be retried, abandoned).",
    ["result"],
)
ALERTS_PENDING = Gauge("dealflow_alerts_pending", "Alerts in the outbox waiting for delivery.")
CIRCUIT_VALUE = {"closed": 0.0, "half_open": 0.5, "open": 1.0}
for _result in ("delivered", "failed", "abandoned"):
    ALERT_DELIVERIES.labels(_result)

OUTCOMES = ("processed", "failed", "dead_lettered")
"""Statuses of events with a recorded outcome (``processed_at``); all but the first are failures."""


@dataclass(frozen=True)
class RaisedAlert:
    """An alert whose outbox row is new (staged in a transaction not necessarily committed)."""

    id: str
    kind: str
    key: str
    summary: str
    data: dict[str, Any] = field(default_factory=dict)


class Alerter:
    """Raises alerts into the outbox: ``stage`` inside the caller's transaction, then
    ``announce`` what was new once it is committed; or ``alert`` in a transaction of its own."""

    def __init__(self, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.clock = clock

    def stage(
        self,
        session: Session,
        kind: str,
        key: str,
        summary: str,
        data: dict[str, Any] | None = None,
    ) -> RaisedAlert | None:
        """Insert the alert's row unless its key exists; returns it when new."""
        now = self.clock()
        raised = RaisedAlert(
            id=f"alert_{uuid.uuid4().hex}",
            kind=kind,
            key=key,
            summary=summary[:2000],
            data=json.loads(json.dumps(data or {}, default=str)),
        )
        inserted = insert_ignore(
            session,
            Alert,
            [
                {
                    "id": raised.id,
                    "key": key,
                    "kind": kind,
                    "summary": raised.summary,
                    "data": raised.data,
                    "status": "pending",
                    "attempts": 0,
                    "created_at": now,
                    "next_attempt_at": now,
                }
            ],
            ["key"],
        )
        return raised if inserted else None

    def announce(self, raised: Iterable[RaisedAlert | None]) -> None:
        """Log and count the alerts staged as new (call after the commit)."""
        for alert in raised:
            if alert is None:
                continue
            ALERTS_SENT.labels(alert.kind).inc()
            log.warning(
                "ALERT %s: %s",
                alert.kind,
                alert.summary,
                extra={"alert": alert.kind, "alert_id": alert.id, "data": alert.data},
            )

    def alert(
        self,
        db: Database,
        kind: str,
        key: str,
        summary: str,
        data: dict[str, Any] | None = None,
    ) -> bool:
        """Raise an alert in a transaction of its own; returns whether it was new."""
        with db.session() as session:
            raised = self.stage(session, kind, key, summary, data)
            session.commit()
        self.announce([raised])
        return raised is not None


# --------------------------------------------------------------------------- delivery


class AlertDispatcher:
    """Delivers the outbox and watches the failure rate; one per worker process (a thread).

    ``clock`` decides what is due (tests move it instead of sleeping); the signature's timestamp
    is always the wall clock, since that is what receivers check it against."""

    BACKOFF = timedelta(seconds=1)
    MAX_BACKOFF = timedelta(hours=1)

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        poll_interval: float = 1.0,
        rate_interval: float = 5.0,
        batch: int = 50,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.poll_interval = poll_interval
        self.rate_interval = rate_interval
        self.batch = batch
        self.alerter = Alerter(clock=clock)
        self.timeout = settings.outbound_timeout.total_seconds()
        self.lease = timedelta(seconds=max(self.timeout * 3, 30.0))
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[-80:]
        self.rate_checks = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = httpx.Client(timeout=self.timeout)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        if self._http.is_closed:
            self._http = httpx.Client(timeout=self.timeout)
        self._thread = threading.Thread(target=self._loop, name="alert-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._http.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run while the ``async with`` block does (the worker's plugin wraps its run in it)."""
        self.start()
        try:
            yield
        finally:
            await asyncio.to_thread(self.stop)

    def _loop(self) -> None:
        next_check = 0.0
        while not self._stop.is_set():
            busy = False
            try:
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.rate_interval
                    self.check_failure_rate()
                    self.count_pending()
                busy = self.deliver_due() >= self.batch
            except Exception:
                log.exception("alert dispatcher pass failed; trying again")
            if not busy:
                self._stop.wait(self.poll_interval)

    # ----------------------------------------------------------------- delivery

    def deliver_due(self) -> int:
        """Deliver (or schedule again) the alerts due now; returns how many were handled."""
        if not self.settings.alert_webhook_url:
            return self._mark_delivered()
        now = self.clock()
        with self.db.session() as session:
            due = [
                r[0]
                for r in session.execute(
                    select(Alert.id)  # type: ignore[call-overload]
                    .where(Alert.status == "pending", Alert.next_attempt_at <= now)
                    .order_by(Alert.next_attempt_at)
                    .limit(self.batch)
                ).all()
            ]
        handled = 0
        for alert_id in due:
            if self._stop.is_set():
                break
            handled += self._deliver(alert_id)
        if handled:
            self.count_pending()
        return handled

    def _mark_delivered(self) -> int:
        """No webhook configured: the log line was the delivery."""
        now = self.clock()
        with self.db.session() as session:
            done = session.execute(
                update(Alert)
                .where(
                    Alert.status == "pending",  # type: ignore[arg-type]
                    Alert.next_attempt_at <= now,  # type: ignore[arg-type,operator]
                )
                .values(status="delivered", delivered_at=now, claimed_by=self.name)
            ).rowcount  # type: ignore[attr-defined]
            session.commit()
        if done:
            ALERT_DELIVERIES.labels("delivered").inc(done)
            self.count_pending()
        return int(done)

    def _deliver(self, alert_id: str) -> int:
        now = self.clock()
        with self.db.session() as session:
            claimed = session.execute(
                update(Alert)
                .where(
                    Alert.id == alert_id,  # type: ignore[arg-type]
                    Alert.status == "pending",  # type: ignore[arg-type]
                    Alert.next_attempt_at <= now,  # type: ignore[arg-type,operator]
                )
                .values(
                    attempts=Alert.attempts + 1,
                    next_attempt_at=now + self.lease,
                    claimed_by=self.name,
                )
            ).rowcount  # type: ignore[attr-defined]
            session.commit()
            if not claimed:
                return 0  # another worker has it
            row = session.get(Alert, alert_id)
        assert row is not None
        error = self._post(row)
        now = self.clock()
        mine = (
            Alert.id == alert_id,  # type: ignore[arg-type]
            Alert.status == "pending",  # type: ignore[arg-type]
            Alert.claimed_by == self.name,  # type: ignore[arg-type]
        )
        if error is None:
            values: dict[str, Any] = {"status": "delivered", "delivered_at": now}
            result = "delivered"
        elif row.attempts >= self.settings.alert_max_attempts:
            values = {"status": "abandoned", "last_error": error}
            result = "abandoned"
            log.error(
                "alert %s (%s) abandoned after %d attempts: %s",
                row.id,
                row.kind,
                row.attempts,
                error,
                extra={"alert": row.kind, "alert_id": row.id},
            )
        else:
            delay = min(self.BACKOFF * 2 ** (row.attempts - 1), self.MAX_BACKOFF)
            values = {"next_attempt_at": now + delay, "last_error": error}
            result = "failed"
            log.info(
                "alert %s not delivered (attempt %d): %s; next attempt in %s",
                row.id,
                row.attempts,
                error,
                delay,
            )
        with self.db.session() as session:
            session.execute(update(Alert).where(*mine).values(**values))
            session.commit()
        ALERT_DELIVERIES.labels(result).inc()
        return 1

    def body(self, row: Alert) -> bytes:
        """What a receiver gets: the same bytes on every attempt."""
        return json.dumps(
            {
                "id": row.id,
                "type": row.kind,
                "summary": row.summary,
                "at": row.created_at.isoformat(),
                "data": row.data,
            },
            separators=(",", ":"),
            default=str,
        ).encode()

    def _post(self, row: Alert) -> str | None:
        """POST the alert; None when the receiver took it (2xx), else what went wrong."""
        url = self.settings.alert_webhook_url
        assert url
        raw = self.body(row)
        headers = {"Content-Type": "application/json", "User-Agent": "dealflow-alerts"}
        if self.settings.alert_webhook_secret:
            headers.update(
                sign(
                    "standard",
                    self.settings.alert_webhook_secret,
                    raw,
                    delivery_id=row.id,
                    timestamp=int(time.time()),
                )
            )
        try:
            response = self._http.post(url, content=raw, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:2000]
        if 200 <= response.status_code < 300:
            return None
        return f"answered {response.status_code}"

    def count_pending(self) -> int:
        with self.db.session() as session:
            pending = int(
                session.execute(
                    select(func.count()).select_from(Alert).where(Alert.status == "pending")
                ).scalar_one()
            )
        ALERTS_PENDING.set(pending)
        return pending

    # ----------------------------------------------------------------- failure rate

    def check_failure_rate(self) -> bool:
        """Raise ``events.failure_rate`` if the last window's outcomes are over the bar (once a
        window, for all workers: the key is the window's number). Returns whether it raised."""
        try:
            now = self.clock()
            window = self.settings.alert_failure_window
            with self.db.session() as session:
                rows = session.execute(
                    select(Event.status, func.count())  # type: ignore[call-overload]
                    .where(
                        Event.processed_at > now - window,  # type: ignore[operator]
                        Event.processed_at <= now,  # type: ignore[operator]
                        Event.status.in_(OUTCOMES),  # type: ignore[attr-defined]
                    )
                    .group_by(Event.status)
                ).all()
            counts = {status: int(n) for status, n in rows}
            total = sum(counts.values())
            failed = total - counts.get("processed", 0)
            rate = self.settings.alert_failure_rate
            if total < self.settings.alert_failure_min_events or failed / total < rate:
                return False
            seconds = window.total_seconds()
            number = int(now.timestamp() // seconds)
            return self.alerter.alert(
                self.db,
                "events.failure_rate",
                f"events.failure_rate:{number}",
                f"{failed} of the last {total} events failed or were dead-lettered "
                f"(threshold {rate:.0%} over {seconds:g}s)",
                {"failed": failed, "total": total, "window_seconds": seconds, "by_status": counts},
            )
        finally:
            self.rate_checks += 1
