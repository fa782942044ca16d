"""What a deal does with a call its integration's open circuit breaker refused: wait, or give up.

The activity reports the open circuit (a non-retryable ``circuit_open`` error whose details are
``CircuitOpenInfo.details()``); the deal workflow asks ``next_wait`` how long to sleep (a durable
timer) before running the call again, or gets ``None``: take the fallback and record the call as
failed with ``gave_up``'s message. Pure: no I/O, no clock (the waited time is passed in).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from domain.durations import format_duration

Fallback = Literal["wait", "fail"]
MIN_DELAY = timedelta(milliseconds=100)


@dataclass(frozen=True)
class CircuitOpenInfo:
    """Why and for how long a call did not leave the worker."""

    delay: timedelta
    """Until the breaker may be probed (the rest of its cool-down, or a short pause)."""
    fallback: Fallback = "wait"
    """``DEALFLOW_BREAKER_FALLBACK`` of the worker that refused the call."""
    max_wait: timedelta = timedelta(days=1)
    """``DEALFLOW_BREAKER_MAX_WAIT``: the most one call waits on open circuits, in all."""

    def details(self) -> dict[str, Any]:
        """The ``ApplicationError`` details (JSON: they travel in the workflow history)."""
        return {
            "delay_seconds": self.delay.total_seconds(),
            "fallback": self.fallback,
            "max_wait_seconds": self.max_wait.total_seconds(),
        }

    @classmethod
    def from_details(cls, details: Any) -> CircuitOpenInfo | None:
        """The info back from an error's first detail; ``None`` if it carries none (a worker
        from before the wait, whose ``circuit_open`` was retryable and is out of attempts)."""
        if not isinstance(details, dict):
            return None
        try:
            delay = timedelta(seconds=float(details["delay_seconds"]))
            max_wait = timedelta(seconds=float(details["max_wait_seconds"]))
        except (KeyError, TypeError, ValueError):
            return None
        fallback = details.get("fallback")
        return cls(
            delay=max(delay, MIN_DELAY),
            fallback="fail" if fallback == "fail" else "wait",
            max_wait=max(max_wait, timedelta(0)),
        )


def next_wait(info: CircuitOpenInfo, waited: timedelta) -> timedelta | None:
    """How long to sleep before calling again, having waited ``waited`` already; ``None`` when
    the fallback is ``fail`` or the maximum wait is used up. The last sleep is cut to what is
    left of the maximum, so a call never waits longer than that in all."""
    if info.fallback == "fail":
        return None
    left = info.max_wait - waited
    if left <= timedelta(0):
        return None
    return min(info.delay, left)


def gave_up(integration: str, info: CircuitOpenInfo, waited: timedelta) -> str:
    """The error recorded (``action_failed``) for a call the open circuit never let through."""
    if info.fallback == "fail":
        return (
            f"circuit of integration '{integration}' open; failed without waiting "
            "(DEALFLOW_BREAKER_FALLBACK=fail)"
        )
    return (
        f"circuit of integration '{integration}' open; gave up after waiting "
        f"{format_duration(waited)} "
        f"(DEALFLOW_BREAKER_MAX_WAIT={format_duration(info.max_wait)})"
    )
