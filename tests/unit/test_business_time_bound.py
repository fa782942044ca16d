"""The longest SLA target a business calendar can count (``max_business_time``), and pipeline
validation refusing a longer one: before, a target of about P9500D with 40-hour weeks was
accepted and then every deal entering the stage failed in ``add_business_time``."""

from datetime import UTC, datetime, timedelta

import pytest

from domain.calendar import GUARANTEED_WEEKS, add_business_time, max_business_time
from domain.pipeline import BusinessCalendar
from domain.validation import parse_and_validate

NINE_TO_FIVE = BusinessCalendar(timezone="Europe/Berlin")


def pipeline(target: str, calendar: dict | None) -> dict:
    data = {
        "name": "SLA",
        "type": "support",
        "currency": "EUR",
        "probability_mode": "stage",
        "stages": [
            {"key": "new", "name": "New", "probability": 0},
            {"key": "open", "name": "Open", "probability": 10, "sla": {"target": target}},
        ],
    }
    if calendar is not None:
        data["calendar"] = calendar
    return data


def test_the_defect_a_long_target_cannot_be_added():
    with pytest.raises(ValueError, match="more than 40000 days"):
        add_business_time(datetime(2025, 1, 6, tzinfo=UTC), timedelta(days=9600), NINE_TO_FIVE)


def test_forty_hour_weeks_count_5200_weeks_less_the_holidays():
    assert max_business_time(NINE_TO_FIVE) == timedelta(hours=40 * GUARANTEED_WEEKS)
    with_holidays = NINE_TO_FIVE.model_copy(
        update={"holidays": ["2025-12-25", "2025-12-25", "2025-12-27", "2026-01-01"]}
    )
    # 2025-12-27 is a Saturday: no working time lost; the repeated date counts once.
    assert max_business_time(with_holidays) == timedelta(hours=40 * GUARANTEED_WEEKS - 16)
    assert max_business_time(BusinessCalendar(weekdays=[])) is None


CALENDARS = [
    NINE_TO_FIVE,
    BusinessCalendar(timezone="UTC", weekdays=list(range(7)), start="00:00", end="24:00"),
    BusinessCalendar(timezone="Europe/Berlin", weekdays=[6], start="02:00", end="02:01"),
    BusinessCalendar(timezone="Europe/Berlin", weekdays=[6], start="01:30", end="03:30"),
    BusinessCalendar(timezone="America/Santiago", weekdays=[5, 6], start="00:00", end="01:00"),
    BusinessCalendar(timezone="Africa/Casablanca", weekdays=[6], start="01:00", end="04:00"),
    BusinessCalendar(timezone="Australia/Lord_Howe", weekdays=[0], start="01:00", end="03:00"),
    BusinessCalendar(
        timezone="America/New_York",
        weekdays=[0, 1, 2, 3, 4],
        start="09:00",
        end="17:00",
        holidays=[f"{year}-{md}" for year in range(2025, 2060) for md in ("01-01", "12-25")],
    ),
]
STARTS = [datetime(2025, 3, 29, 23, 30, tzinfo=UTC), datetime(2031, 10, 26, 0, 59, tzinfo=UTC)]


@pytest.mark.parametrize("cal", CALENDARS, ids=lambda c: f"{c.timezone}-{c.weekdays}-{c.start}")
@pytest.mark.parametrize("start", STARTS, ids=lambda s: s.date().isoformat())
def test_the_bound_can_always_be_added(cal: BusinessCalendar, start: datetime):
    bound = max_business_time(cal)
    assert bound is not None and bound > timedelta(0)
    due = add_business_time(start, bound, cal)
    assert due > start


def test_validation_refuses_a_target_over_the_bound_naming_it():
    calendar = {"timezone": "Europe/Berlin"}
    spec, problems = parse_and_validate(pipeline("P9500D", calendar))
    assert spec is not None
    assert [(p.code, p.loc) for p in problems] == [
        ("sla_beyond_calendar", ["stages", 1, "sla", "target"])
    ]
    assert "40 h of working time a week" in problems[0].msg
    assert "at most P8666DT16H" in problems[0].msg
    # At the bound, and without a calendar (wall-clock time, up to 100 years), it is fine.
    assert parse_and_validate(pipeline("P8666DT16H", calendar))[1] == []
    assert parse_and_validate(pipeline("P9500D", None))[1] == []


def test_a_calendar_with_problems_reports_those_and_not_the_target():
    _, problems = parse_and_validate(pipeline("P9500D", {"weekdays": []}))
    assert [p.code for p in problems] == ["invalid_calendar"]


@pytest.mark.parametrize(
    ("cal", "start", "due"),
    [
        # 2025-01-05 is a Sunday: after its window, the next one is a week later.
        (BusinessCalendar(weekdays=[6]), (2025, 1, 5, 18), (2025, 1, 12, 10)),
        # Monday only, the next Monday a holiday: two weeks later.
        (
            BusinessCalendar(weekdays=[0], holidays=["2025-01-13"]),
            (2025, 1, 6, 18),
            (2025, 1, 20, 10),
        ),
    ],
)
def test_a_one_day_week_after_its_window_is_not_out_of_working_time(cal, start, due):
    """Before, yesterday and today counted as idle days too, and a calendar with one working
    weekday "had no working time left" from that day's evening on (a 500 in simulate)."""
    start_at = datetime(*start, tzinfo=UTC)
    assert add_business_time(start_at, timedelta(hours=1), cal) == datetime(*due, tzinfo=UTC)
