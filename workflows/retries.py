"""Retry policy for workflows' reads and writes of dealflow's own database: quick at first,
backing off to every 30 s, never giving up (a database outage must delay work, not lose it);
and the message of the error at the bottom of an activity failure."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

DB_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)


def cause_message(exc: BaseException) -> str:
    """The innermost cause's message (an ``ActivityError`` wraps the activity's own error)."""
    while getattr(exc, "cause", None) is not None:
        exc = exc.cause  # type: ignore[assignment]
    return getattr(exc, "message", None) or str(exc)
