"""Business-hours arithmetic for SLA clocks.

A :class:`~domain.pipeline.BusinessCalendar` says when the clock runs: the weekdays (0 = Monday),
the daily window ``start``-``end`` (local wall-clock ``HH:MM``; ``end`` may be ``24:00``) and the
holidays (local ``YYYY-MM-DD`` dates), all in one IANA time zone. Outside those hours the clock
stops, so "Friday 16:00 + PT4H" with 9-17 Monday to Friday is Monday 12:00.

Pure and deterministic (no clock is read): safe in a Temporal workflow. Times come in and go out
as aware UTC datetimes; the arithmetic between the local window edges is done in UTC, so a window
that spans a daylight-saving change counts the hours that really pass.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from domain.pipeline import BusinessCalendar

__all__ = [
    "GUARANTEED_WEEKS",
    "add_business_time",
    "calendar_issues",
    "max_business_time",
    "validate_calendar",
    "working_week",
]

MAX_SCANNED_DAYS = 40_000
"""How many calendar days one computation may walk (about 110 years) before it gives up."""
GUARANTEED_WEEKS = 5_200
"""How many weeks of a calendar's working time :func:`max_business_time` promises (about 100
years): the walk covers 5,714 whole weeks after the start's day, and the 514 left over absorb
what daylight-saving changes take from working days (at most a day's window each, a few a
year)."""


def _parse_hhmm(text: str) -> tuple[int, int]:
    hours, minutes = text.split(":")
    return int(hours), int(minutes)


def _minutes(text: str) -> int:
    hours, minutes = _parse_hhmm(text)
    return hours * 60 + minutes


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name such as 'Europe/Berlin')"
        ) from None


def calendar_issues(cal: BusinessCalendar) -> list[tuple[list[str | int], str]]:
    """Everything wrong with ``cal``, each as (location inside the calendar, message)."""
    issues: list[tuple[list[str | int], str]] = []
    try:
        _zone(cal.timezone)
    except ValueError as exc:
        issues.append((["timezone"], str(exc)))
    try:
        start, end = _minutes(cal.start), _minutes(cal.end)
    except ValueError:
        issues.append((["start"], f"start {cal.start!r} and end {cal.end!r} must be HH:MM"))
    else:
        if end > 24 * 60:
            issues.append((["end"], f"end {cal.end!r} is after 24:00"))
        elif start >= end:
            issues.append(
                (["end"], f"the working day must end after it starts ({cal.start}-{cal.end})")
            )
    if not cal.weekdays:
        issues.append((["weekdays"], "at least one weekday (0 = Monday ... 6 = Sunday) is needed"))
    for i, holiday in enumerate(cal.holidays):
        try:
            date.fromisoformat(holiday)
        except (TypeError, ValueError):
            issues.append((["holidays", i], f"{holiday!r} is not a date such as '2025-12-25'"))
    return issues


def validate_calendar(cal: BusinessCalendar) -> list[str]:
    """Human-readable problems with ``cal`` (empty when it is usable)."""
    return [msg for _, msg in calendar_issues(cal)]


def max_business_time(cal: BusinessCalendar) -> timedelta | None:
    """The longest duration :func:`add_business_time` can add with ``cal`` from any start
    (``None`` when ``cal`` has problems): :data:`GUARANTEED_WEEKS` of its working week, less a
    working day's window for every holiday on a working weekday (past ones too, to be safe)."""
    if calendar_issues(cal):
        return None
    weekdays = set(cal.weekdays)
    holidays = {date.fromisoformat(h) for h in cal.holidays}
    lost = sum(1 for h in holidays if h.weekday() in weekdays)
    return max(timedelta(0), working_week(cal) * GUARANTEED_WEEKS - _working_day(cal) * lost)


def _working_day(cal: BusinessCalendar) -> timedelta:
    return timedelta(minutes=_minutes(cal.end) - _minutes(cal.start))


def working_week(cal: BusinessCalendar) -> timedelta:
    """The working time of a week without holidays (for a calendar without problems)."""
    return _working_day(cal) * len(set(cal.weekdays))


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("business-time arithmetic needs an aware datetime (UTC)")
    return moment.astimezone(UTC)


def _local_edge(day: date, minutes: int, zone: ZoneInfo) -> datetime:
    """The UTC instant of local wall-clock ``day`` + ``minutes`` (24:00 = next midnight)."""
    extra_days, minutes = divmod(minutes, 24 * 60)
    local = datetime.combine(day + timedelta(days=extra_days), time(0, 0), tzinfo=zone)
    local = local.replace(hour=minutes // 60, minute=minutes % 60)
    return local.astimezone(UTC)


def add_business_time(
    start: datetime, duration: timedelta, cal: BusinessCalendar | None
) -> datetime:
    """``start`` + ``duration`` counting only the calendar's working time (an aware UTC result).

    Without a calendar this is plain ``start + duration``. A result that lands exactly on the end
    of a working day stays there (Friday 16:00 + PT1H = Friday 17:00). Raises ``ValueError`` for a
    naive ``start``, a negative duration, or a calendar without any working time.
    """
    start_utc = _as_utc(start)
    if duration < timedelta(0):
        raise ValueError("a business-time duration cannot be negative")
    if cal is None:
        return start_utc + duration
    issues = validate_calendar(cal)
    if issues:
        raise ValueError("the business calendar has no usable working time: " + "; ".join(issues))
    if duration == timedelta(0):
        return start_utc

    zone = _zone(cal.timezone)
    open_at, close_at = _minutes(cal.start), _minutes(cal.end)
    weekdays = set(cal.weekdays)
    holidays = {date.fromisoformat(h) for h in cal.holidays}
    # In any 7 consecutive days one is a working weekday unless a holiday takes it, so a run of
    # idle days longer than this means there is no working time left at all. The walk starts
    # with yesterday and today, whose windows may be over before ``start``: they may be idle
    # working days on top (a Sunday-only calendar, from a Sunday evening).
    max_idle_days = 7 * (len(holidays) + 1) + 2

    remaining = duration
    cursor = start_utc
    day = start_utc.astimezone(zone).date() - timedelta(days=1)  # a window may start yesterday
    idle_days = 0
    for _ in range(MAX_SCANNED_DAYS):
        if day.weekday() in weekdays and day not in holidays:
            window_start = _local_edge(day, open_at, zone)
            window_end = _local_edge(day, close_at, zone)
            if window_end > cursor and window_end > window_start:
                idle_days = 0
                begin = max(cursor, window_start)
                available = window_end - begin
                if remaining <= available:
                    return begin + remaining
                remaining -= available
                cursor = window_end
            else:
                idle_days += 1
        else:
            idle_days += 1
        if idle_days > max_idle_days:
            raise ValueError("the business calendar has no working time left")
        try:
            day += timedelta(days=1)
        except OverflowError:
            break
    raise ValueError(f"{duration} of business time reaches more than {MAX_SCANNED_DAYS} days ahead")
