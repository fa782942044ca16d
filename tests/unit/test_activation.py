"""The pure derivation of what is in effect at an instant: status, test mode, version."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.activation import (
    PendingGoLive,
    effective_activation,
    effective_version,
    is_live,
    pending_go_live,
)

GO_LIVE = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
BEFORE = GO_LIVE - timedelta(microseconds=1)
AFTER = GO_LIVE + timedelta(days=3)


@pytest.mark.parametrize(
    ("now", "expected"),
    [(BEFORE, 1), (GO_LIVE, 2), (AFTER, 2)],
)
def test_the_scheduled_version_takes_over_at_go_live(now: datetime, expected: int) -> None:
    assert effective_version(1, 2, GO_LIVE, now) == expected


def test_without_a_scheduled_version_the_active_one_stays() -> None:
    assert effective_version(1, None, GO_LIVE, AFTER) == 1
    assert effective_version(None, None, None, AFTER) is None
    assert effective_version(3, 4, None, AFTER) == 3  # no date: nothing takes over


def test_a_live_pipeline_keeps_its_status_until_go_live_then_active_without_test_mode() -> None:
    assert effective_activation("active", False, GO_LIVE, BEFORE, 2) == ("active", False)
    assert effective_activation("test", True, GO_LIVE, BEFORE, 2) == ("test", True)
    assert effective_activation("test", True, GO_LIVE, GO_LIVE, 2) == ("active", False)
    # Without a scheduled version a past go_live_at changes nothing (activated since).
    assert effective_activation("test", True, GO_LIVE, AFTER) == ("test", True)


def test_a_first_go_live_is_scheduled_or_test_until_then() -> None:
    assert effective_activation("scheduled", False, GO_LIVE, BEFORE) == ("scheduled", False)
    assert effective_activation("scheduled", True, GO_LIVE, BEFORE) == ("test", True)
    assert effective_activation("scheduled", True, GO_LIVE, GO_LIVE) == ("active", False)
    assert effective_activation("draft", False, None, AFTER) == ("draft", False)


def test_the_pending_go_live_is_shown_until_it_is_reached() -> None:
    assert pending_go_live("active", 1, 2, GO_LIVE, BEFORE) == PendingGoLive(2, GO_LIVE)
    assert pending_go_live("active", 1, 2, GO_LIVE, GO_LIVE) is None
    assert pending_go_live("scheduled", 1, None, GO_LIVE, BEFORE) == PendingGoLive(1, GO_LIVE)
    assert pending_go_live("scheduled", 1, None, GO_LIVE, AFTER) is None
    assert pending_go_live("active", 1, None, GO_LIVE, BEFORE) is None
    assert pending_go_live("draft", None, None, None, BEFORE) is None


def test_live_means_deals_already_run_on_an_active_or_test_version() -> None:
    assert is_live("active", 1, None, None, BEFORE)
    assert is_live("test", 1, None, None, BEFORE)
    assert is_live("active", 1, 2, GO_LIVE, BEFORE)
    assert not is_live("draft", None, None, None, BEFORE)
    assert not is_live("scheduled", 1, None, GO_LIVE, BEFORE)  # a first go-live to come
    assert is_live("scheduled", 1, None, GO_LIVE, AFTER)  # reached, the timer late
