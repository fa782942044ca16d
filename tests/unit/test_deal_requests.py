"""The bodies and headers of /v1/deals: a snooze time needs an offset and is kept in UTC;
If-None-Match matches weakly and ``*`` matches any deal (RFC 9110 13.1.2)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from api.routes.deals import SnoozeBody, none_match


def test_snooze_needs_an_offset_and_is_kept_in_utc() -> None:
    with pytest.raises(ValidationError) as caught:
        SnoozeBody.model_validate({"until": "2027-01-01T00:00:00"})
    assert caught.value.errors()[0]["loc"] == ("until",)
    until = SnoozeBody.model_validate({"until": "2027-01-01T02:00:00+02:00"}).until
    assert until == datetime(2027, 1, 1, tzinfo=UTC)
    assert until.tzinfo == UTC


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ("", False),
        ('"abc"', True),
        ('W/"abc"', True),
        ("*", True),
        (" * ", True),
        ('"x", W/"abc"', True),
        ('"x",  "abc" ', True),
        ('"x"', False),
        ('W/"x"', False),
        ('"abc', False),
    ],
)
def test_if_none_match(header: str | None, matches: bool) -> None:
    assert none_match(header, '"abc"') is matches
