"""The native envelope's ways of naming a deal: ``deal_id``, or ``deal_ref`` to an id another
system gave it, which a deal declares in ``external_ids`` (pure: no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from domain.events import ONE_DEAL, EnvelopeError, validate_envelope
from store.links import declared, ref_of

REF = {"by": "stripe_customer", "id": "cus_123"}


def problems(event_type: str, data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(EnvelopeError) as caught:
        validate_envelope({"type": event_type, "data": data})
    return [(tuple(p.loc), p.msg) for p in caught.value.problems]


@pytest.mark.parametrize(
    "event_type, rest",
    [
        ("deal.updated", {"fields": {"paid": True}}),
        ("deal.activity", {"kind": "call"}),
        ("deal.stage_change_requested", {"to_stage": "won"}),
    ],
)
def test_an_event_about_a_deal_names_it_by_id_or_by_reference(
    event_type: str, rest: dict[str, Any]
) -> None:
    assert validate_envelope({"type": event_type, "data": {"deal_ref": REF, **rest}}) == (
        event_type,
        {"deal_ref": REF, **rest},
    )
    assert (
        validate_envelope({"type": event_type, "data": {"deal_id": "d1", **rest}})[1]["deal_id"]
        == "d1"
    )
    assert problems(event_type, rest) == [(("body", "data", "deal_id"), ONE_DEAL)]
    assert problems(event_type, {"deal_id": "d1", "deal_ref": REF, **rest}) == [
        (("body", "data", "deal_ref"), ONE_DEAL)
    ]


def test_the_missing_deal_is_named_with_every_other_problem() -> None:
    found = problems("deal.updated", {"value": -5, "colour": "red"})
    assert [loc[-1] for loc, _ in found] == ["deal_id", "value", "colour"]


def test_a_deal_is_always_created_with_its_own_id() -> None:
    data = {"pipeline_id": "p", "title": "t", "value": 1, "currency": "USD"}
    assert problems("deal.created", {"deal_ref": REF, **data})[0][0][-1] in {"deal_id", "deal_ref"}
    ok = validate_envelope(
        {
            "type": "deal.created",
            "data": {"deal_id": "d1", "external_ids": {"stripe_customer": "cus_1"}, **data},
        }
    )
    assert ok[1]["external_ids"] == {"stripe_customer": "cus_1"}


@pytest.mark.parametrize(
    "ref, where",
    [
        ({"by": "Stripe", "id": "x"}, "by"),
        ({"by": "a b", "id": "x"}, "by"),
        ({"by": "crm", "id": ""}, "id"),
        ({"by": "crm", "id": "a\nb"}, "id"),
        ({"by": "crm", "id": "x" * 201}, "id"),
        ({"by": "crm"}, "id"),
        ({"by": "crm", "id": "x", "extra": 1}, "extra"),
    ],
)
def test_a_bad_reference_is_named(ref: dict[str, Any], where: str) -> None:
    found = problems("deal.activity", {"deal_ref": ref, "kind": "call"})
    assert ("body", "data", "deal_ref", where) in [loc for loc, _ in found], found


def test_only_an_event_with_its_deal_declares_links() -> None:
    at = datetime.now(UTC)
    rows = declared("evt_1", "d1", {"external_ids": {"crm": "7", "stripe_customer": "c"}}, at)
    assert {(r["namespace"], r["external_id"], r["deal_id"]) for r in rows} == {
        ("crm", "7", "d1"),
        ("stripe_customer", "c", "d1"),
    }
    assert declared("evt_2", None, {"external_ids": {"crm": "7"}}, at) == []
    assert declared("evt_3", "d1", {"fields": {}}, at) == []
    assert ref_of({"deal_ref": REF}) == ("stripe_customer", "cus_123")
    assert ref_of({"deal_id": "d1"}) is None
