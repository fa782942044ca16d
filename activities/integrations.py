"""Outbound integration calls: httpx with timeouts, an ``Idempotency-Key`` per call, and a circuit
breaker per integration endpoint whose state every worker shares (the ``circuit_breakers``
table, on SQLite and PostgreSQL alike).

Breaker: ``closed`` counts failures (5xx, 408, 429, timeouts, connection errors) in a window of
``DEALFLOW_BREAKER_WINDOW``; at ``DEALFLOW_BREAKER_FAILURE_THRESHOLD`` it turns ``open``. While
open, a call does not leave the worker: it fails with a NON-retryable ``CircuitOpen``
(``ApplicationError`` type ``circuit_open``) whose details (``domain.circuit.CircuitOpenInfo``)
carry the time until the breaker may be probed and the worker's ``DEALFLOW_BREAKER_FALLBACK`` and
``DEALFLOW_BREAKER_MAX_WAIT``. No activity attempt is spent on an open circuit: the deal workflow
catches it and, with fallback ``wait`` (the default), sleeps on a durable timer (no worker slot)
until the probe may go and runs the activity again, with the same idempotency key; once the
waits add up to the maximum, or at once with fallback ``fail``, the call is recorded as
``action_failed`` ("circuit of integration X open; ..."). After the cool-down
(``DEALFLOW_BREAKER_COOLDOWN``) exactly one caller wins the move to ``half_open`` and probes; the
callers that lose the race get ``circuit_open`` with a short delay. The probe's success closes
the breaker; its failure opens it again for another cool-down, and the prober gets
``circuit_open`` too (it waits that cool-down out like everyone else).

Retry policies for each kind of work live here too (the workflows import them): DB writes,
notifications, integration calls. A 4xx other than 408/409/429 is non-retryable: it fails at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import httpx
from sqlalchemy import update
from temporalio import activity
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from activities.alerts import CIRCUIT_STATE, CIRCUIT_VALUE, Alerter
from dealflow.settings import Settings
from domain.circuit import MIN_DELAY, CircuitOpenInfo
from store.db import Database
from store.models import CircuitBreaker
from store.types import utcnow
from store.upsert import insert_ignore

log = logging.getLogger("dealflow.integrations")

NON_RETRYABLE = ["invalid", "rejected", "not_configured", "validation"]

DB_WRITE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=20,
    non_retryable_error_types=NON_RETRYABLE,
)
NOTIFY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    maximum_attempts=8,
    non_retryable_error_types=NON_RETRYABLE,
)
INTEGRATION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=6,
    non_retryable_error_types=NON_RETRYABLE,
)
TIMEOUTS = {
    "notify": timedelta(seconds=60),
    "call_integration": timedelta(seconds=30),
    "create_task": timedelta(seconds=30),
    "assign_owner": timedelta(seconds=30),
}
"""start_to_close per effect kind: the processing timeout of one attempt."""


def effect_retry(kind: str) -> RetryPolicy:
    if kind == "call_integration":
        return INTEGRATION_RETRY
    if kind == "notify":
        return NOTIFY_RETRY
    return DB_WRITE_RETRY


def effect_timeout(kind: str) -> timedelta:
    return TIMEOUTS.get(kind, timedelta(seconds=60))


# --------------------------------------------------------------------------- breaker


def _label(endpoint: str) -> str:
    """The metric label of an endpoint: the integration's name."""
    return endpoint.split(" ", 1)[0]


@dataclass(frozen=True)
class Admission:
    probe: bool  # this call is the half-open probe


class CircuitOpen(ApplicationError):
    """The breaker is open: the call did not leave the worker (or was the probe, and failed).

    Non-retryable, so the activity spends no attempt waiting: the workflow reads ``info`` back
    from the details and waits with a durable timer, or takes the fallback.
    """

    def __init__(self, message: str, info: CircuitOpenInfo) -> None:
        super().__init__(message, info.details(), type="circuit_open", non_retryable=True)
        self.info = info


class Breaker:
    """The shared breaker of one integration endpoint; each method is one short transaction."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        alerter: Alerter | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.settings = settings
        self.threshold = settings.breaker_failure_threshold
        self.window = settings.breaker_window
        self.cooldown = settings.breaker_cooldown
        self.fallback: Literal["wait", "fail"] = (
            "fail" if settings.breaker_fallback == "fail" else "wait"
        )
        self.max_wait = settings.breaker_max_wait
        self.probe_timeout = max(settings.outbound_timeout * 2, timedelta(seconds=5))
        self.alerter = alerter
        self.clock = clock

    def _row(self, session: Any, name: str) -> CircuitBreaker:
        row = session.get(CircuitBreaker, name)
        if row is None:
            insert_ignore(
                session,
                CircuitBreaker,
                [
                    {
                        "integration": name,
                        "state": "closed",
                        "failures": 0,
                        "updated_at": self.clock(),
                    }
                ],
                ["integration"],
            )
            session.commit()
            row = session.get(CircuitBreaker, name)
        return row  # type: ignore[no-any-return]

    def state(self, name: str) -> str:
        with self.db.session() as session:
            return self._row(session, name).state

    def admit(self, name: str) -> Admission:
        """Let a call through, or raise ``CircuitOpen`` (non-retryable, with the delay)."""
        now = self.clock()
        with self.db.session() as session:
            row = self._row(session, name)
            CIRCUIT_STATE.labels(_label(name)).set(CIRCUIT_VALUE.get(row.state, 0.0))
            if row.state == "closed":
                return Admission(probe=False)
            if row.state == "open":
                opened = row.opened_at or now
                reopen_at = opened + self.cooldown
                if now < reopen_at:
                    raise self._open_error(name, reopen_at - now)
                # Cool-down over: one caller (a conditional update) becomes the probe.
                won = session.execute(
                    update(CircuitBreaker)
                    .where(
                        CircuitBreaker.integration == name,  # type: ignore[arg-type]
                        CircuitBreaker.state == "open",  # type: ignore[arg-type]
                        CircuitBreaker.opened_at == row.opened_at,  # type: ignore[arg-type]
                    )
                    .values(state="half_open", probe_started_at=now, updated_at=now)
                ).rowcount  # type: ignore[attr-defined]
                session.commit()
                if won:
                    CIRCUIT_STATE.labels(_label(name)).set(0.5)
                    log.info("circuit %s half-open: probing", name)
                    return Admission(probe=True)
                raise self._open_error(name, timedelta(seconds=1))
            # half_open: a probe is in flight; take over one that never reported back.
            started = row.probe_started_at or now
            if now - started > self.probe_timeout:
                won = session.execute(
                    update(CircuitBreaker)
                    .where(
                        CircuitBreaker.integration == name,  # type: ignore[arg-type]
                        CircuitBreaker.state == "half_open",  # type: ignore[arg-type]
                        CircuitBreaker.probe_started_at == row.probe_started_at,  # type: ignore[arg-type]
                    )
                    .values(probe_started_at=now, updated_at=now)
                ).rowcount  # type: ignore[attr-defined]
                session.commit()
                if won:
                    return Admission(probe=True)
            raise self._open_error(name, min(self.cooldown, timedelta(seconds=2)))

    def _open_error(self, name: str, delay: timedelta, why: str = "is open") -> CircuitOpen:
        info = CircuitOpenInfo(
            delay=max(delay, MIN_DELAY), fallback=self.fallback, max_wait=self.max_wait
        )
        return CircuitOpen(
            f"circuit of integration '{name}' {why}; next try in {info.delay.total_seconds():.1f}s",
            info,
        )

    def reopened(self, name: str, error: str) -> CircuitOpen:
        """The error for a failed probe: ``failure`` opened the breaker again for a cool-down,
        which the prober waits out like every other caller (instead of retrying at once)."""
        return self._open_error(name, self.cooldown, f"is open again: the probe failed ({error})")

    def success(self, name: str) -> None:
        now = self.clock()
        with self.db.session() as session:
            row = self._row(session, name)
            if row.state != "closed" or row.failures:
                was = row.state
                row.state, row.failures, row.window_started_at = "closed", 0, None
                row.opened_at = row.probe_started_at = None
                row.updated_at = now
                session.add(row)
                session.commit()
                if was != "closed":
                    log.info("circuit %s closed", name)
        CIRCUIT_STATE.labels(_label(name)).set(0.0)

    def failure(self, name: str, error: str) -> None:
        now = self.clock()
        opened = False
        with self.db.session() as session:
            row = session.get(CircuitBreaker, name, with_for_update=True) or self._row(
                session, name
            )
            if row.state == "half_open":
                row.state, row.opened_at, row.probe_started_at = "open", now, None
                opened = True
            elif row.state == "closed":
                if row.window_started_at is None or now - row.window_started_at > self.window:
                    row.window_started_at, row.failures = now, 1
                else:
                    row.failures += 1
                if row.failures >= self.threshold:
                    row.state, row.opened_at = "open", now
                    opened = True
            row.last_error = error[:2000]
            row.updated_at = now
            session.add(row)
            failures = row.failures
            raised = None
            if opened and self.alerter is not None:  # in the transaction that opens it
                raised = self.alerter.stage(
                    session,
                    "circuit.opened",
                    f"circuit.opened:{name}:{now.isoformat()}",
                    f"circuit of integration '{name}' opened after {failures} failure(s): {error}",
                    {"integration": name, "failures": failures, "error": error},
                )
            session.commit()
        if opened:
            CIRCUIT_STATE.labels(_label(name)).set(1.0)
            if self.alerter is not None:
                self.alerter.announce([raised])


# --------------------------------------------------------------------------- calls


def idempotency_key() -> str:
    """``{workflow run id}:{activity id}``: the same across an activity's retries."""
    try:
        info = activity.info()
    except RuntimeError:
        return ""
    return f"{info.workflow_run_id}:{info.activity_id}"


def call(
    breaker: Breaker,
    settings: Settings,
    name: str,
    url: str,
    body: dict[str, Any],
    *,
    key: str | None = None,
) -> httpx.Response:
    """POST ``body`` to the integration through its breaker (one per endpoint: name and URL)."""
    endpoint = f"{name} {url}"
    admission = breaker.admit(endpoint)
    headers = {"Idempotency-Key": key or idempotency_key()}
    try:
        response = httpx.post(
            url, json=body, timeout=settings.outbound_timeout.total_seconds(), headers=headers
        )
    except httpx.HTTPError as exc:
        breaker.failure(endpoint, f"{type(exc).__name__}: {exc}")
        if admission.probe:
            raise breaker.reopened(endpoint, f"{type(exc).__name__}: {exc}") from exc
        raise ApplicationError(f"{name}: {url}: {exc}", type="unreachable") from exc
    status = response.status_code
    if status >= 500 or status in (408, 429):
        breaker.failure(endpoint, f"answered {status}")
        if admission.probe:
            raise breaker.reopened(endpoint, f"answered {status}")
        raise ApplicationError(f"{name} answered {status}", type="failed")
    # Any other answer means the endpoint is up: a probe closes the breaker.
    if admission.probe or status < 400:
        breaker.success(endpoint)
    if status == 409:
        raise ApplicationError(f"{name} answered 409", type="conflict")
    if status >= 400:
        raise ApplicationError(f"{name} answered {status}", type="rejected", non_retryable=True)
    return response


_BREAKERS: dict[int, Breaker] = {}


def breaker_for(db: Database, settings: Settings) -> Breaker:
    """One breaker (and alerter) per database of this process (and its settings: a worker with
    other settings, as in tests, must not get another's cool-down or fallback)."""
    found = _BREAKERS.get(id(db))
    if found is None or found.settings is not settings:
        found = _BREAKERS[id(db)] = Breaker(db, settings, Alerter())
    return found
