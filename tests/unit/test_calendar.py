from datetime import UTC, datetime, timedelta, timezone

import pytest

from domain.calendar import add_business_time, validate_calendar
from domain.pipeline import BusinessCalendar

NINE_TO_FIVE = BusinessCalendar()  # UTC, Monday-Friday, 09:00-17:00


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# 2025-01-03 is a Friday, 2025-01-06 a Monday.


def test_without_a_calendar_it_is_plain_addition():
    start = utc(2025, 1, 3, 16, 0)
    assert add_business_time(start, timedelta(hours=4), None) == utc(2025, 1, 3, 20, 0)


def test_friday_afternoon_plus_four_hours_is_monday_noon():
    assert add_business_time(utc(2025, 1, 3, 16), timedelta(hours=4), NINE_TO_FIVE) == utc(
        2025, 1, 6, 12
    )


def test_within_one_day():
    assert add_business_time(utc(2025, 1, 6, 10), timedelta(hours=2), NINE_TO_FIVE) == utc(
        2025, 1, 6, 12
    )


def test_landing_exactly_on_closing_time_stays_there():
    assert add_business_time(utc(2025, 1, 3, 16), timedelta(hours=1), NINE_TO_FIVE) == utc(
        2025, 1, 3, 17
    )


def test_start_before_opening_counts_from_opening():
    assert add_business_time(utc(2025, 1, 6, 3), timedelta(hours=1), NINE_TO_FIVE) == utc(
        2025, 1, 6, 10
    )


def test_start_after_closing_counts_from_next_opening():
    assert add_business_time(utc(2025, 1, 6, 18), timedelta(minutes=30), NINE_TO_FIVE) == utc(
        2025, 1, 7, 9, 30
    )


def test_start_on_a_weekend():
    saturday = utc(2025, 1, 4, 12)
    assert add_business_time(saturday, timedelta(hours=8), NINE_TO_FIVE) == utc(2025, 1, 6, 17)


def test_multi_day_duration_counts_working_hours_only():
    # P2D = 48 business hours = 6 working days of 8 hours: Mon 9:00 -> next Mon 17:00
    assert add_business_time(utc(2025, 1, 6, 9), timedelta(days=2), NINE_TO_FIVE) == utc(
        2025, 1, 13, 17
    )


def test_holidays_are_skipped():
    cal = BusinessCalendar(holidays=["2025-01-06"])  # the Monday
    assert add_business_time(utc(2025, 1, 3, 16), timedelta(hours=4), cal) == utc(2025, 1, 7, 12)


def test_zero_duration_returns_start():
    start = utc(2025, 1, 4, 12)  # even outside working hours
    assert add_business_time(start, timedelta(0), NINE_TO_FIVE) == start


def test_result_is_aware_utc_even_for_other_offsets():
    start = datetime(2025, 1, 6, 11, tzinfo=timezone(timedelta(hours=2)))  # 09:00 UTC
    result = add_business_time(start, timedelta(hours=1), NINE_TO_FIVE)
    assert result == utc(2025, 1, 6, 10)
    assert result.utcoffset() == timedelta(0)


def test_works_in_the_calendar_time_zone():
    cal = BusinessCalendar(timezone="America/New_York")  # 09:00-17:00 EST = 14:00-22:00 UTC
    # Friday 21:00 UTC = 16:00 in New York; 4 h -> Monday 12:00 New York = 17:00 UTC
    assert add_business_time(utc(2025, 1, 3, 21), timedelta(hours=4), cal) == utc(2025, 1, 6, 17)


def test_local_day_differs_from_utc_day():
    cal = BusinessCalendar(timezone="Asia/Tokyo")  # UTC+9: 09:00-17:00 = 00:00-08:00 UTC
    # Sunday 23:00 UTC is Monday 08:00 in Tokyo: an hour before opening.
    assert add_business_time(utc(2025, 1, 5, 23), timedelta(hours=2), cal) == utc(2025, 1, 6, 2)


def test_daylight_saving_change_is_respected():
    cal = BusinessCalendar(timezone="Europe/Berlin")
    # Friday 2025-03-28 16:00 CET (15:00 UTC); Monday 2025-03-31 is CEST (UTC+2).
    result = add_business_time(utc(2025, 3, 28, 15), timedelta(hours=2), cal)
    assert result == utc(2025, 3, 31, 8)  # Monday 10:00 CEST


def test_window_spanning_a_daylight_saving_change_counts_real_hours():
    # A 00:00-24:00 day on 2025-03-30 in Berlin lasts 23 real hours.
    cal = BusinessCalendar(timezone="Europe/Berlin", weekdays=[6], start="00:00", end="24:00")
    sunday_start = utc(2025, 3, 29, 23)  # Sunday 00:00 CET
    assert add_business_time(sunday_start, timedelta(hours=23), cal) == utc(2025, 3, 30, 22)
    # one more hour spills into the next Sunday
    assert add_business_time(sunday_start, timedelta(hours=24), cal) == utc(2025, 4, 5, 23)


def test_end_of_day_24_00():
    cal = BusinessCalendar(weekdays=[0, 1, 2, 3, 4, 5, 6], start="00:00", end="24:00")
    start = utc(2025, 1, 3, 16)
    assert add_business_time(start, timedelta(hours=30), cal) == start + timedelta(hours=30)


def test_naive_start_is_refused():
    with pytest.raises(ValueError, match="aware"):
        add_business_time(datetime(2025, 1, 6, 9), timedelta(hours=1), NINE_TO_FIVE)


def test_negative_duration_is_refused():
    with pytest.raises(ValueError, match="negative"):
        add_business_time(utc(2025, 1, 6, 9), timedelta(hours=-1), NINE_TO_FIVE)


def test_calendar_without_weekdays_has_no_working_time():
    with pytest.raises(ValueError, match="working time"):
        add_business_time(utc(2025, 1, 6), timedelta(hours=1), BusinessCalendar(weekdays=[]))


def test_calendar_with_empty_day_has_no_working_time():
    cal = BusinessCalendar(start="09:00", end="09:00")
    with pytest.raises(ValueError, match="working time"):
        add_business_time(utc(2025, 1, 6), timedelta(hours=1), cal)


def test_every_working_day_a_holiday_does_not_loop_forever():
    # Only Mondays are working days and the next 20 Mondays are holidays: still finite.
    mondays = [(datetime(2025, 1, 6) + timedelta(weeks=k)).date().isoformat() for k in range(20)]
    cal = BusinessCalendar(weekdays=[0], holidays=mondays)
    assert add_business_time(utc(2025, 1, 6), timedelta(hours=1), cal) == utc(2025, 5, 26, 10)


def test_absurd_durations_fail_instead_of_hanging():
    with pytest.raises(ValueError, match="days ahead"):
        add_business_time(utc(2025, 1, 6), timedelta(days=999_999), NINE_TO_FIVE)


def test_validate_calendar_accepts_a_good_calendar():
    assert validate_calendar(NINE_TO_FIVE) == []
    assert validate_calendar(BusinessCalendar(timezone="Europe/Berlin", end="24:00")) == []


def test_validate_calendar_lists_every_problem():
    cal = BusinessCalendar(
        timezone="Mars/Olympus_Mons", start="18:00", end="09:00", weekdays=[], holidays=["x"]
    )
    problems = validate_calendar(cal)
    assert len(problems) == 4
    assert any("Mars/Olympus_Mons" in p for p in problems)
    assert any("end after it starts" in p for p in problems)
    assert any("weekday" in p for p in problems)
    assert any("'x'" in p for p in problems)


@pytest.mark.parametrize("name", ["", "../../etc/passwd", "Not/AZone", "utc+2"])
def test_validate_calendar_refuses_bad_time_zones(name):
    problems = validate_calendar(BusinessCalendar(timezone=name))
    assert len(problems) == 1
    assert "time zone" in problems[0]


def test_end_after_midnight_is_refused():
    assert validate_calendar(BusinessCalendar(end="24:30")) == ["end '24:30' is after 24:00"]
