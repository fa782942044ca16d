"""ISO 8601 durations (``PT4H``, ``P14D``, ``P1DT2H30M``) as used throughout the contract."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_DURATION = re.compile(
    r"^P(?!$)(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> timedelta:
    """Parse an ISO 8601 duration without years or months (their length is not fixed)."""
    if not isinstance(text, str):
        raise ValueError("a duration must be an ISO 8601 string such as 'PT4H' or 'P14D'")
    match = _DURATION.match(text.strip().upper())
    if not match:
        raise ValueError(
            f"'{text}' is not an ISO 8601 duration such as 'PT30M', 'PT4H' or 'P14D' "
            "(years and months are not supported)"
        )
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    result = timedelta(
        weeks=parts.get("weeks", 0),
        days=parts.get("days", 0),
        hours=parts.get("hours", 0),
        minutes=parts.get("minutes", 0),
        seconds=parts.get("seconds", 0),
    )
    if result <= timedelta(0):
        raise ValueError(f"'{text}' must be longer than zero")
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
        return value
    return parse_duration(value)  # type: ignore[arg-type]


Duration = Annotated[
    timedelta,
    BeforeValidator(_coerce),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""A pydantic field type: accepts ISO 8601 text, holds a timedelta, serialises back to ISO text."""
