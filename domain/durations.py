"""ISO 8601 durations (``PT4H``, ``P14D``, ``P1DT2H30M``) as used throughout the contract.

A duration is longer than zero and at most :data:`MAX_DURATION` (100 years): every deadline
dealflow computes is an instant plus a duration, and an instant must stay representable (a
Python datetime ends with the year 9999; a Temporal timer with about 292 years).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

MAX_DURATION = timedelta(days=36525)
"""The longest duration accepted anywhere: 100 years of 365.25 days (``P36525D``)."""
MAX_DURATION_TEXT = "100 years (P36525D)"

_DURATION = re.compile(
    r"^P(?!$)(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


_UNIT_SECONDS = {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}


def _shown(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def parse_duration(text: str) -> timedelta:
    """Parse an ISO 8601 duration without years or months (their length is not fixed)."""
    if not isinstance(text, str):
        raise ValueError("a duration must be an ISO 8601 string such as 'PT4H' or 'P14D'")
    match = _DURATION.match(text.strip().upper())
    if not match:
        raise ValueError(
            f"'{_shown(text)}' is not an ISO 8601 duration such as 'PT30M', 'PT4H' or 'P14D' "
            "(years and months are not supported)"
        )
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    # Summed as seconds first: timedelta() itself overflows (or gets infinity) on huge parts.
    seconds = sum(parts.get(unit, 0) * size for unit, size in _UNIT_SECONDS.items())
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(
            f"'{_shown(text)}' is longer than {MAX_DURATION_TEXT}, the longest duration allowed"
        )
    result = timedelta(seconds=seconds)
    if result <= timedelta(0):  # also what rounds to zero microseconds
        raise ValueError(f"'{_shown(text)}' must be longer than zero")
    return result


def format_duration(value: timedelta) -> str:
    """The shortest ISO 8601 form of a positive timedelta."""
    total = value.total_seconds()
    days, rest = divmod(int(total), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    frac = total - int(total)
    out = "P"
    if days:
        out += f"{days}D"
    if hours or minutes or seconds or frac or not days:
        out += "T"
        if hours:
            out += f"{hours}H"
        if minutes:
            out += f"{minutes}M"
        if seconds or frac or (not hours and not minutes):
            sec = seconds + frac
            out += f"{sec:g}S"
    return out


def _coerce(value: object) -> timedelta:
    if isinstance(value, timedelta):
        if not timedelta(0) < value <= MAX_DURATION:
            raise ValueError(f"a duration must be longer than zero and at most {MAX_DURATION_TEXT}")
        return value
    return parse_duration(value)  # type: ignore[arg-type]


Duration = Annotated[
    timedelta,
    BeforeValidator(_coerce),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""A pydantic field type: accepts ISO 8601 text, holds a timedelta, serialises back to ISO text.

Longer than zero and at most :data:`MAX_DURATION`, given as text or as a timedelta."""
