"""``/v1/sources``: where webhooks come from, how they are signed, and how they are limited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError
from sqlmodel import select

from api.auth import Admin, Ctx
from api.ingress.clientip import parse_network
from api.problems import ProblemError
from dealflow.ids import new_id
from domain.durations import Duration, format_duration
from domain.signatures import generate_secret, validate_secret
from domain.text import NoControl
from store import links
from store.models import Source

router = APIRouter(prefix="/v1/sources", tags=["sources"])

Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), NoControl
]
Scheme = Literal["standard", "github", "stripe", "hmac"]


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_second: float = Field(gt=0, le=100_000)
    burst: int = Field(gt=0, le=1_000_000)


def _check_cidrs(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    out = []
    for item in value:
        try:
            out.append(str(parse_network(item)))
        except ValueError:
            raise ValueError(f"'{item}' is not an IPv4 or IPv6 address or CIDR block") from None
    return out


class SourceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    scheme: Scheme
    ip_allowlist: list[str] = Field(default_factory=list, max_length=1000)
    rate_limit: RateLimit | None = None
    tolerance: Duration | None = None
    mapping: dict[str, Any] | None = None
    secret: str | None = Field(None, max_length=1024)

    _cidrs = field_validator("ip_allowlist")(_check_cidrs)


NOT_NULLABLE = ("name", "enabled", "ip_allowlist")
"""What a PATCH may change but not clear (``rate_limit``, ``tolerance`` and ``mapping`` may be
null: no limit of its own, the default tolerance, no mapping)."""


def _without_null(schema: dict[str, Any]) -> None:
    """The member's JSON schema without its ``null`` branch (and without the null default)."""
    branches = [b for b in schema.pop("anyOf", []) if b.get("type") != "null"]
    if len(branches) == 1:
        schema.update(branches[0])
    elif branches:
        schema["anyOf"] = branches
    schema.pop("default", None)


class SourcePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Not nullable (see _not_null): None is only the "left out" default, so the schema omits it.
    name: Name | None = Field(None, json_schema_extra=_without_null)
    enabled: bool | None = Field(None, json_schema_extra=_without_null)
    ip_allowlist: list[str] | None = Field(None, max_length=1000, json_schema_extra=_without_null)
    rate_limit: RateLimit | None = None
    tolerance: Duration | None = None
    mapping: dict[str, Any] | None = None

    _cidrs = field_validator("ip_allowlist")(_check_cidrs)

    @field_validator(*NOT_NULLABLE, mode="before")
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        # Runs only for a value that was given: left out, the field keeps its current value.
        if value is None:
            raise PydanticCustomError(
                "not_nullable",
                "'{field}' cannot be null: leave it out to keep the current value",
                {"field": info.field_name},
            )
        return value


class RotateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    secret: str | None = Field(None, max_length=1024)
    overlap: Duration = Field(default=timedelta(hours=24))


class SourceOut(BaseModel):
    id: str
    name: str
    scheme: str
    ingress_url: str
    enabled: bool
    ip_allowlist: list[str]
    rate_limit: RateLimit | None
    tolerance: str | None
    mapping: dict[str, Any] | None
    blocked_until: datetime | None
    previous_valid_until: datetime | None
    created_at: datetime
    updated_at: datetime


class SourceCreated(SourceOut):
    secret: str


class Rotated(BaseModel):
    secret: str
    previous_valid_until: datetime


def _out(row: Source, request: Request) -> SourceOut:
    base = str(request.base_url).rstrip("/")
    rate = (
        RateLimit(per_second=row.rate_per_second, burst=row.rate_burst)
        if row.rate_per_second and row.rate_burst
        else None
    )
    return SourceOut(
        id=row.id,
        name=row.name,
        scheme=row.scheme,
        ingress_url=f"{base}/v1/webhooks/{row.id}",
        enabled=row.enabled,
        ip_allowlist=row.ip_allowlist,
        rate_limit=rate,
        tolerance=(
            format_duration(timedelta(seconds=row.tolerance_seconds))
            if row.tolerance_seconds
            else None
        ),
        mapping=row.mapping,
        blocked_until=row.blocked_until,
        previous_valid_until=row.previous_valid_until,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _secret_for(scheme: str, given: str | None) -> str:
    if given is None:
        return generate_secret(scheme)
    problem = validate_secret(scheme, given)
    if problem:
        raise ProblemError(422, problem, errors=[{"loc": ["body", "secret"], "msg": problem}])
    return given


def _check_mapping(ctx: Ctx, mapping: dict[str, Any] | None) -> None:
    if mapping is None:
        return
    from domain.mapping import MappingError, compile_mapping

    try:
        compile_mapping(mapping)
    except MappingError as exc:
        raise ProblemError(422, "the mapping is invalid", errors=exc.errors) from None


@router.post("", status_code=201, response_model=SourceCreated)
def create(body: SourceCreate, request: Request, ctx: Ctx, principal: Admin) -> SourceCreated:
    secret = _secret_for(body.scheme, body.secret)
    _check_mapping(ctx, body.mapping)
    source_id = new_id("src")
    row = Source(
        id=source_id,
        name=body.name,
        scheme=body.scheme,
        secret_enc=ctx.box.encrypt(secret, context=source_id),
        ip_allowlist=body.ip_allowlist,
        rate_per_second=body.rate_limit.per_second if body.rate_limit else None,
        rate_burst=body.rate_limit.burst if body.rate_limit else None,
        tolerance_seconds=body.tolerance.total_seconds() if body.tolerance else None,
        mapping=body.mapping,
    )
    with ctx.db.session() as session:
        session.add(row)
        session.commit()
    return SourceCreated(**_out(row, request).model_dump(), secret=secret)


@router.get("", response_model=list[SourceOut])
def index(request: Request, ctx: Ctx, _: Admin) -> list[SourceOut]:
    with ctx.db.session() as session:
        rows = session.exec(select(Source).order_by(Source.id)).all()  # type: ignore[arg-type]
    return [_out(r, request) for r in rows]


def _load(ctx: Ctx, source_id: str) -> Source:
    with ctx.db.session() as session:
        row = session.get(Source, source_id)
    if row is None:
        raise ProblemError(404, f"no source {source_id}")
    return row


@router.get("/{source_id}", response_model=SourceOut)
def show(source_id: str, request: Request, ctx: Ctx, _: Admin) -> SourceOut:
    return _out(_load(ctx, source_id), request)


@router.patch("/{source_id}", response_model=SourceOut)
def patch(source_id: str, body: SourcePatch, request: Request, ctx: Ctx, _: Admin) -> SourceOut:
    changes = body.model_dump(exclude_unset=True)
    if "mapping" in changes:
        _check_mapping(ctx, body.mapping)
    with ctx.db.session() as session:
        row = session.get(Source, source_id)
        if row is None:
            raise ProblemError(404, f"no source {source_id}")
        for key in ("name", "enabled", "ip_allowlist", "mapping"):
            if key in changes:
                setattr(row, key, changes[key])
        if "rate_limit" in changes:
            row.rate_per_second = body.rate_limit.per_second if body.rate_limit else None
            row.rate_burst = body.rate_limit.burst if body.rate_limit else None
        if "tolerance" in changes:
            row.tolerance_seconds = body.tolerance.total_seconds() if body.tolerance else None
        if changes.get("enabled") is True:
            row.blocked_until = None
        row.updated_at = datetime.now(UTC)
        out = _out(row, request)  # before the commit: a row that cannot be shown is not stored
        session.add(row)
        session.commit()
    if ctx.sources:
        ctx.sources.forget(source_id)
    return out


@router.post("/{source_id}/rotate-secret", response_model=Rotated)
def rotate(source_id: str, ctx: Ctx, _: Admin, body: RotateBody | None = None) -> Rotated:
    body = body or RotateBody()
    with ctx.db.session() as session:
        row = session.get(Source, source_id)
        if row is None:
            raise ProblemError(404, f"no source {source_id}")
        secret = _secret_for(row.scheme, body.secret)
        now = datetime.now(UTC)
        row.previous_secret_enc = row.secret_enc
        row.previous_valid_until = now + body.overlap
        row.secret_enc = ctx.box.encrypt(secret, context=row.id)
        row.updated_at = now
        session.add(row)
        session.commit()
    if ctx.sources:
        ctx.sources.forget(source_id)
    assert row.previous_valid_until is not None
    return Rotated(secret=secret, previous_valid_until=row.previous_valid_until)


class MappingTest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payload: Any
    headers: dict[str, str] = Field(default_factory=dict)
    event_type: str | None = Field(None, max_length=200)
    mapping: dict[str, Any] | None = None


@router.post("/{source_id}/mapping:test")
def mapping_test(source_id: str, body: MappingTest, ctx: Ctx, _: Admin) -> dict[str, Any]:
    """Run a sample payload through the source's mapping (or through ``mapping``, unsaved) and
    show the native event it becomes — nothing is stored or processed."""
    from domain.events import EnvelopeError, validate_envelope
    from domain.mapping import MappingError, compile_mapping

    row = _load(ctx, source_id)
    mapping = body.mapping if body.mapping is not None else row.mapping
    headers = {k.lower(): v for k, v in body.headers.items()}
    foreign_type = body.event_type or headers.get("x-github-event")
    if mapping is None:
        if row.scheme == "github":
            return {
                "status": "ignored",
                "foreign_type": foreign_type,
                "event": None,
                "detail": "a github source without a mapping ignores every event",
            }
        envelope = body.payload
    else:
        document = {"body": body.payload, "headers": headers, "event_type": foreign_type}
        try:
            compiled = compile_mapping(mapping)
            mapped = compiled.apply(document)
        except MappingError as exc:
            raise ProblemError(422, str(exc), errors=exc.errors) from None
        foreign_type = compiled.foreign_type(document)
        if mapped is None:
            return {
                "status": "ignored",
                "foreign_type": foreign_type,
                "event": None,
                "detail": "the mapping does not list this event type",
            }
        envelope = {"type": mapped[0], "data": mapped[1]}
    try:
        native_type, data = validate_envelope(envelope, base_loc=("mapped",))
    except EnvelopeError as exc:
        raise ProblemError(
            422,
            "the mapped event does not match its schema: "
            + "; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in exc.problems),
            errors=[{"loc": p.loc, "msg": p.msg} for p in exc.problems],
        ) from None
    result: dict[str, Any] = {
        "status": "mapped",
        "foreign_type": foreign_type,
        "event": {"type": native_type, "data": data},
    }
    if (ref := links.ref_of(data)) is not None:
        # What the relay's enrichment would find now (null: it would dead-letter the event).
        with ctx.db.engine.connect() as conn:
            result["resolved_deal_id"] = links.resolve(conn, [ref]).get(ref)
    return result
