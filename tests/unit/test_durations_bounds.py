"""Durations have an upper bound (100 years), so no deadline computed from one overflows; the
simulator refuses a clock that leaves the range its deadlines need."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel, ValidationError

from domain.durations import MAX_DURATION, Duration, parse_duration
from domain.pipeline import PipelineSnapshot, PipelineSpec
from domain.simulation import LATEST, Script, SimulationError, simulate


@pytest.mark.parametrize(
    "text",
    [
        "P99999999999D",
        "PT99999999999999999999S",
        "P3000000D",
        "P36526D",
        "P5218W",
        "P36525DT1S",
        "PT876601H",
        "P1" + "0" * 400 + "D",  # float('1e400') is infinity
        "PT1" + "0" * 400 + ".5S",
    ],
)
def test_longer_than_the_bound_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"longer than 100 years \(P36525D\)"):
        parse_duration(text)


def test_the_bound_itself_is_accepted() -> None:
    assert parse_duration("P36525D") == MAX_DURATION == timedelta(days=36525)
    assert parse_duration("PT876600H") == MAX_DURATION
    assert parse_duration("P1DT2H30M") == timedelta(days=1, hours=2, minutes=30)
    assert parse_duration("PT0.5S") == timedelta(milliseconds=500)


@pytest.mark.parametrize("text", ["PT0S", "P0D", "PT0.0000001S"])
def test_zero_and_what_rounds_to_zero_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="longer than zero"):
        parse_duration(text)


def test_the_message_does_not_echo_a_huge_input_whole() -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration("P" + "9" * 10_000 + "D")
    assert len(str(caught.value)) < 200


class _Holder(BaseModel):
    d: Duration


def test_the_pydantic_type_names_the_field_and_bounds_timedeltas_too() -> None:
    with pytest.raises(ValidationError) as caught:
        _Holder.model_validate({"d": "P99999999999D"})
    assert caught.value.errors()[0]["loc"] == ("d",)
    with pytest.raises(ValidationError):
        _Holder(d=MAX_DURATION + timedelta(seconds=1))
    with pytest.raises(ValidationError):
        _Holder(d=timedelta(0))
    assert _Holder(d=MAX_DURATION).model_dump(mode="json") == {"d": "P36525D"}


def test_a_pipeline_with_a_huge_duration_is_refused() -> None:
    for stage in (
        {"rotting": "P3000000D"},
        {"sla": {"target": "P3000000D"}},
        {"approval": {"approvers": ["a"], "timeout": "P3000000D"}},
    ):
        with pytest.raises(ValidationError, match="100 years"):
            PipelineSpec.model_validate(
                {
                    "name": "p",
                    "type": "sales",
                    "currency": "USD",
                    "probability_mode": "stage",
                    "stages": [{"key": "a", "name": "A", "probability": 1, **stage}],
                }
            )


SNAP = PipelineSnapshot(
    pipeline_id="pl_sim",
    version=1,
    spec=PipelineSpec.model_validate(
        {
            "name": "p",
            "type": "sales",
            "currency": "USD",
            "probability_mode": "stage",
            "stages": [
                {
                    "key": "lead",
                    "name": "Lead",
                    "probability": 10,
                    "rotting": "P36525D",
                    "sla": {"target": "P36525D"},
                },
                {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
            ],
        }
    ),
)


def _problems(script: dict, **kw: object) -> list[tuple[str, list]]:
    with pytest.raises(SimulationError) as caught:
        simulate(SNAP, script, **kw)  # type: ignore[arg-type]
    return [(p.code, p.loc) for p in caught.value.problems]


def test_a_simulated_clock_past_the_range_is_refused_not_overflowed() -> None:
    wait = {"do": "wait", "for": "P36525D"}
    assert _problems({"steps": [wait] * 100}) == [("invalid_step_time", ["steps", 69, "for"])]
    late = {"start_at": "9999-12-31T23:59:59Z", "steps": [{"do": "wait", "for": "P1D"}]}
    assert _problems(late) == [("invalid_step_time", ["start_at"])]
    after = {"do": "activity", "after": "P36525D"}
    assert _problems({"steps": [after] * 100}) == [("invalid_step_time", ["steps", 69, "after"])]
    at = {"steps": [{"do": "activity", "at": "9500-01-01T00:00:00Z"}]}
    assert _problems(at) == [("invalid_step_time", ["steps", 0, "at"])]
    assert _problems({"start_at": "0001-01-01T00:00:00Z"}) == [("invalid_step_time", ["start_at"])]
    far = datetime(9500, 1, 1, tzinfo=UTC)
    assert _problems({}, start_at=far) == [("invalid_step_time", ["start_at"])]


def test_the_edge_of_the_range_runs_with_the_longest_deadlines() -> None:
    """At LATEST, a 100-year SLA and rotting are still representable."""
    script = Script.model_validate({"start_at": LATEST.isoformat(), "steps": [{"do": "activity"}]})
    result = simulate(SNAP, script)
    assert result["final"]["stage"] == "lead"
    assert result["final"]["rotting_due_at"].startswith("9100-")
    assert result["final"]["sla"]["due_at"].startswith("9100-")
