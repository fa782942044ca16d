"""The pure part of waiting on an open circuit: the details round trip, how long to wait, and
the message a call the circuit never let through is recorded with."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dealflow.settings import Settings
from domain.circuit import CircuitOpenInfo, gave_up, next_wait

S = timedelta(seconds=1)


def test_details_round_trip_through_json_values() -> None:
    info = CircuitOpenInfo(delay=1.5 * S, fallback="fail", max_wait=120 * S)
    assert info.details() == {"delay_seconds": 1.5, "fallback": "fail", "max_wait_seconds": 120}
    assert CircuitOpenInfo.from_details(info.details()) == info


@pytest.mark.parametrize(
    "details", [None, "circuit open", {}, {"delay_seconds": 1}, {"delay_seconds": "x"}]
)
def test_details_from_before_the_wait_are_not_an_open_circuit(details: object) -> None:
    """An old worker's ``circuit_open`` (retryable, no details) is a plain failure."""
    assert CircuitOpenInfo.from_details(details) is None


def test_odd_details_are_made_safe() -> None:
    info = CircuitOpenInfo.from_details(
        {"delay_seconds": 0, "fallback": "retry", "max_wait_seconds": -5}
    )
    assert info == CircuitOpenInfo(
        delay=timedelta(milliseconds=100), fallback="wait", max_wait=timedelta(0)
    )


def test_wait_for_the_delay_then_what_is_left_of_the_maximum() -> None:
    info = CircuitOpenInfo(delay=30 * S, max_wait=70 * S)
    assert next_wait(info, 0 * S) == 30 * S
    assert next_wait(info, 30 * S) == 30 * S
    assert next_wait(info, 60 * S) == 10 * S  # cut to the maximum
    assert next_wait(info, 70 * S) is None
    assert next_wait(info, 80 * S) is None


def test_fallback_fail_never_waits() -> None:
    assert next_wait(CircuitOpenInfo(delay=S, fallback="fail"), 0 * S) is None


def test_the_recorded_error_names_the_circuit_and_the_setting() -> None:
    waited = gave_up("crm", CircuitOpenInfo(delay=S, max_wait=2 * S), 2 * S)
    assert waited == (
        "circuit of integration 'crm' open; gave up after waiting PT2S "
        "(DEALFLOW_BREAKER_MAX_WAIT=PT2S)"
    )
    failed = gave_up("crm", CircuitOpenInfo(delay=S, fallback="fail"), 0 * S)
    assert failed.startswith("circuit of integration 'crm' open;")
    assert "DEALFLOW_BREAKER_FALLBACK=fail" in failed


def test_settings() -> None:
    default = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (default.breaker_fallback, default.breaker_max_wait) == ("wait", timedelta(days=1))
    custom = Settings(_env_file=None, breaker_fallback="fail", breaker_max_wait="PT90S")  # type: ignore[call-arg]
    assert (custom.breaker_fallback, custom.breaker_max_wait) == ("fail", 90 * S)
    with pytest.raises(ValueError):
        Settings(_env_file=None, breaker_fallback="retry")  # type: ignore[call-arg]
