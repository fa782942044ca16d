"""Prometheus metrics of the API process (names prefixed ``dealflow_``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

WEBHOOKS_RECEIVED = Counter(
    "dealflow_webhooks_received",
    "Webhooks received, by source and outcome.",
    ["source", "outcome"],
)
WEBHOOK_ACK = Histogram(
    "dealflow_webhook_ack_seconds",
    "Time from request start to the webhook answer.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PENDING_HANDOFF = Gauge(
    "dealflow_events_pending_handoff",
    "Accepted events not yet handed to Temporal.",
)
HANDED_OFF = Counter(
    "dealflow_events_handed_off",
    "Events handed to Temporal by the relay.",
)
SOURCES_BLOCKED = Counter(
    "dealflow_sources_blocked",
    "Times a source was blocked after a burst of authentication failures.",
    ["source"],
)
