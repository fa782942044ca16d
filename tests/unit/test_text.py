"""Strings without control characters (domain/text.py) and deal ids a URL path can carry, in
the request models and the native events; event times need an offset and are kept in UTC."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import BaseModel, StringConstraints, ValidationError

from domain.events import EnvelopeError, validate_envelope
from domain.text import NoControl, NoControlAtAll, NulFreeJson


class _M(BaseModel):
    text: Annotated[str, StringConstraints(max_length=10), NoControl] | None = None
    word: Annotated[str, NoControlAtAll] | None = None
    doc: Annotated[dict[str, Any], NulFreeJson] | None = None


@pytest.mark.parametrize("char", [chr(c) for c in range(32) if chr(c) not in "\t\n\r"])
def test_c0_control_characters_are_refused_in_text(char: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _M(text=f"a{char}")
    error = caught.value.errors()[0]
    assert error["loc"] == ("text",)
    assert f"U+{ord(char):04X} at position 1" in error["msg"]


def test_tab_newline_and_other_text_pass() -> None:
    assert _M(text="a\tb\r\nc").text == "a\tb\r\nc"
    assert _M(text="é ü \x7f").text == "é ü \x7f"


def test_too_long_is_named_as_such() -> None:
    with pytest.raises(ValidationError, match="at most 10 characters"):
        _M(text="x" * 11)


@pytest.mark.parametrize("char", ["\x00", "\t", "\n", "\x7f"])
def test_words_take_no_control_character_at_all(char: str) -> None:
    with pytest.raises(ValidationError):
        _M(word=f"w{char}")


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({"a": "\x00"}, "a"),
        ({"a": {"b": ["ok", "x\x00"]}}, "a.b[1]"),
        ({"k\x00": 1}, "the key 'k\\x00'"),
        ({"a": [{"k\x00": 1}]}, "the key 'a[0].k\\x00'"),
    ],
)
def test_nul_is_refused_anywhere_in_json(doc: dict, where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _M(doc=doc)
    assert caught.value.errors()[0]["msg"].endswith(f"found in {where}")


def test_json_may_hold_other_control_characters() -> None:
    doc = {"a": ["\x07", {"b": "\x1b[0m"}], "n": None, "x": 1.5}
    assert _M(doc=doc).doc == doc


def _created(**data: Any) -> dict[str, Any]:
    return {
        "type": "deal.created",
        "data": {
            "deal_id": "d1",
            "pipeline_id": "p1",
            "title": "t",
            "value": 1,
            "currency": "USD",
            **data,
        },
    }


@pytest.mark.parametrize("deal_id", ["a/b", "../x", "/", ".", "..", " .. ", "a\x00", "a\x7f"])
def test_deal_ids_no_url_path_can_carry_are_refused(deal_id: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        validate_envelope(_created(deal_id=deal_id))
    assert [p.loc for p in caught.value.problems] == [["body", "data", "deal_id"]]


@pytest.mark.parametrize("deal_id", ["a.b", "...", "a..b", "deal:1", "a b", "ü"])
def test_other_deal_ids_are_fine(deal_id: str) -> None:
    assert validate_envelope(_created(deal_id=deal_id))[1]["deal_id"] == deal_id


def test_an_event_keeps_deal_refs_and_external_ids() -> None:
    _, data = validate_envelope(_created(external_ids={"crm": "c-1"}))
    assert data["external_ids"] == {"crm": "c-1"}
    kind, data = validate_envelope(
        {"type": "deal.updated", "data": {"deal_ref": {"by": "crm", "id": "c-1"}, "title": "x"}}
    )
    assert kind == "deal.updated" and data["deal_ref"] == {"by": "crm", "id": "c-1"}


def test_event_times_need_an_offset_and_are_kept_in_utc() -> None:
    activity: dict[str, Any] = {"type": "deal.activity", "data": {"deal_id": "d", "kind": "k"}}
    activity["data"]["at"] = "2027-01-01T00:00:00"
    with pytest.raises(EnvelopeError) as caught:
        validate_envelope(activity)
    assert [p.loc for p in caught.value.problems] == [["body", "data", "at"]]
    activity["data"]["at"] = "2027-01-01T02:00:00+02:00"
    assert validate_envelope(activity)[1]["at"] == "2027-01-01T00:00:00Z"
