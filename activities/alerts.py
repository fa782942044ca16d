"""Alerts and processing metrics of the worker process.

An alert goes to the log (always, at WARNING) and, when ``DEALFLOW_ALERT_WEBHOOK_URL`` is set, to
that URL as a JSON POST signed the Standard Webhooks way (``webhook-id``, ``webhook-timestamp``,
``webhook-signature`` with ``DEALFLOW_ALERT_WEBHOOK_SECRET``), so the receiver verifies it with
any Standard Webhooks library. Alerts are best effort: a receiver that is down is logged, never
retried into the processing path.

Kinds: ``event.dead_lettered``, ``circuit.opened``, ``events.failure_rate``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client import Counter, Gauge, Histogram

from dealflow.settings import Settings
from domain.signatures import sign

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
ALERTS_SENT = Counter("dealflow_alerts", "Alerts raised, by kind.", ["kind"])
CIRCUIT_VALUE = {"closed": 0.0, "half_open": 0.5, "open": 1.0}


class Alerter:
    """Raises alerts; also watches the failure rate of recorded outcomes over a window."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._rate_alerted_at = -1e18

    def alert(self, kind: str, summary: str, data: dict[str, Any] | None = None) -> None:
        ALERTS_SENT.labels(kind).inc()
        body = {
            "type": kind,
            "summary": summary,
            "at": datetime.now(UTC).isoformat(),
            "data": data or {},
        }
        log.warning("ALERT %s: %s", kind, summary, extra={"alert": kind, "data": data or {}})
        url = self.settings.alert_webhook_url
        if not url:
            return
        raw = json.dumps(body, separators=(",", ":"), default=str).encode()
        headers = {"Content-Type": "application/json"}
        if self.settings.alert_webhook_secret:
            headers.update(
                sign(
                    "standard",
                    self.settings.alert_webhook_secret,
                    raw,
                    delivery_id=f"alert_{uuid.uuid4().hex}",
                    timestamp=int(time.time()),
                )
            )
        try:
            response = httpx.post(url, content=raw, headers=headers, timeout=5.0)
            if response.status_code >= 300:
                log.warning("alert webhook %s answered %s", url, response.status_code)
        except httpx.HTTPError as exc:
            log.warning("alert webhook %s unreachable: %s", url, exc)

    def observe(self, outcomes: list[str]) -> None:
        """Count recorded outcomes; alert once a window when the failure rate passes the bar."""
        if not outcomes:
            return
        now = self.clock()
        window = self.settings.alert_failure_window.total_seconds()
        fire: tuple[int, int] | None = None
        with self._lock:
            for outcome in outcomes:
                self._outcomes.append((now, outcome != "processed"))
            while self._outcomes and self._outcomes[0][0] < now - window:
                self._outcomes.popleft()
            total = len(self._outcomes)
            failed = sum(1 for _, bad in self._outcomes if bad)
            if (
                total >= self.settings.alert_failure_min_events
                and failed / total >= self.settings.alert_failure_rate
                and now - self._rate_alerted_at >= window
            ):
                self._rate_alerted_at = now
                fire = (failed, total)
        if fire is not None:
            failed, total = fire
            self.alert(
                "events.failure_rate",
                f"{failed} of the last {total} events failed or were dead-lettered "
                f"(threshold {self.settings.alert_failure_rate:.0%})",
                {"failed": failed, "total": total},
            )
