"""The native event envelope ``{"type", "data"}`` and the schema of each event type."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from domain.deal import Problem
from domain.sizes import fields_problem
from domain.text import NoControl, NoControlAtAll, NulFreeJson


def _addressable(value: str) -> str:
    """A deal is read at ``/v1/deals/{deal_id}``: an id that no URL path can carry is refused."""
    if "/" in value:
        raise PydanticCustomError(
            "unaddressable_id", "must not contain '/' (the id is a segment of a URL path)"
        )
    if value in (".", ".."):
        raise PydanticCustomError(
            "unaddressable_id", "cannot be '.' or '..' (the id is a segment of a URL path)"
        )
    return value


Id = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    NoControlAtAll,
    AfterValidator(_addressable),
]
"""A deal's or a pipeline's id: no control characters, no '/', not '.' or '..'."""
Title = Annotated[str, StringConstraints(max_length=500), NoControl]
Owner = Annotated[str, StringConstraints(max_length=200), NoControl]
"""As long as the deals table's owner column."""


def _fits_a_deal(fields: dict[str, Any]) -> dict[str, Any]:
    """Fields larger than a deal may keep can never be applied: refused at once (422), not
    accepted to fail in the deal's workflow."""
    if (too_large := fields_problem({}, fields)) is not None:
        raise PydanticCustomError("too_large", too_large)
    return fields


Fields = Annotated[dict[str, Any], NulFreeJson, AfterValidator(_fits_a_deal)]
Namespace = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
"""Where an external id comes from, e.g. ``stripe_customer``, ``github_issue``, ``hubspot``."""
ExternalId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), NoControlAtAll
]


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DealRef(_Data):
    """A deal named by an id another system gave it: the relay resolves it to the deal that
    declared that id in ``external_ids`` (enrichment), before the event reaches a workflow."""

    by: Namespace
    id: ExternalId


ONE_DEAL = "give exactly one of 'deal_id' and 'deal_ref'"


class _ForOneDeal(_Data):
    """An event about an existing deal, named by ``deal_id`` or by ``deal_ref`` (one of them)."""

    deal_id: Id | None = None
    deal_ref: DealRef | None = None
    # Exactly one of them: checked by validate_envelope, with every other problem.


class DealCreated(_Data):
    deal_id: Id
    pipeline_id: Id
    title: Title
    value: float = Field(ge=0)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
    owner: Owner | None = None
    fields: Fields = Field(default_factory=dict)
    stage: Annotated[str, StringConstraints(max_length=64), NoControlAtAll] | None = None
    external_ids: dict[Namespace, ExternalId] | None = None
    """Ids other systems know this deal by (``{"stripe_customer": "cus_…"}``): events with a
    ``deal_ref`` to one of them are routed to this deal."""


class DealUpdated(_ForOneDeal):
    fields: Fields | None = None
    value: float | None = Field(None, ge=0)
    title: Title | None = None
    owner: Owner | None = None
    external_ids: dict[Namespace, ExternalId] | None = None


class DealActivity(_ForOneDeal):
    kind: Annotated[str, StringConstraints(min_length=1, max_length=100), NoControl]
    at: AwareDatetime | None = None
    """RFC 3339 with an offset (kept in UTC)."""

    @field_validator("at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None


class StageChangeRequested(_ForOneDeal):
    to_stage: Annotated[str, StringConstraints(min_length=1, max_length=64), NoControlAtAll]
    actor: Annotated[str, StringConstraints(max_length=200), NoControl] | None = None
    fields: Fields | None = None


EVENT_TYPES: dict[str, type[_Data]] = {
    "deal.created": DealCreated,
    "deal.updated": DealUpdated,
    "deal.activity": DealActivity,
    "deal.stage_change_requested": StageChangeRequested,
}


class DealEvent(BaseModel):
    """One accepted event as the deal workflow receives it (the relay batches these)."""

    event_id: str
    type: Literal["deal.created", "deal.updated", "deal.activity", "deal.stage_change_requested"]
    data: dict[str, Any]
    source_id: str | None = None
    received_at: datetime
    replay: int = 0
    """How often it was replayed from the dead letters (part of the deal workflow's dedup key)."""


class EnvelopeError(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.msg for p in problems))
        self.problems = problems


def validate_envelope(payload: Any, *, base_loc: tuple[str, ...] = ("body",)) -> tuple[str, dict]:
    """Check ``{"type", "data"}`` against the type's schema; return the type and normalised data.

    Raises EnvelopeError naming every bad field; an unknown type is a problem too.
    """
    if not isinstance(payload, dict):
        raise EnvelopeError(
            [Problem(code="invalid", loc=list(base_loc), msg="the body must be a JSON object")]
        )
    event_type = payload.get("type")
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        known = ", ".join(EVENT_TYPES)
        raise EnvelopeError(
            [
                Problem(
                    code="unknown_type",
                    loc=[*base_loc, "type"],
                    msg=f"'type' must be one of {known}",
                )
            ]
        )
    data = payload.get("data")
    model = EVENT_TYPES[event_type]
    problems: list[Problem] = []
    if issubclass(model, _ForOneDeal) and isinstance(data, dict):
        given = [k for k in ("deal_id", "deal_ref") if data.get(k) is not None]
        if len(given) != 1:
            where = given[-1] if given else "deal_id"
            problems.append(Problem(code="invalid", loc=[*base_loc, "data", where], msg=ONE_DEAL))
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        problems += [
            Problem(code="invalid", loc=[*base_loc, "data", *err["loc"]], msg=err["msg"])
            for err in exc.errors()
        ]
    if problems:
        raise EnvelopeError(problems)
    return event_type, parsed.model_dump(mode="json", exclude_none=True)
