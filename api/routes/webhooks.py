"""``POST /v1/webhooks/{source_id}``: verify, validate, store durably, answer — never wait on
Temporal (the relay hands stored events over asynchronously)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from api.context import AppContext
from api.ingress.body import parse_json, read_limited
from api.ingress.clientip import allowed, client_ip
from api.metrics import SOURCES_BLOCKED, WEBHOOK_ACK, WEBHOOKS_RECEIVED
from api.problems import ProblemError, problem_response, unexpected
from api.sources_cache import ActiveSource
from dealflow.ids import new_id
from domain.events import EVENT_TYPES, EnvelopeError, validate_envelope
from domain.mapping import MappingError
from domain.signatures import SignatureError, stripe_ids, verify
from store.events import NewEvent
from store.models import Source

router = APIRouter(tags=["webhooks"])
log = logging.getLogger("dealflow.ingress")

KEPT = frozenset(
    {
        "content-type",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "x-github-delivery",
        "x-github-event",
        "x-event-id",
        "stripe-signature",
    }
)
AUTH_WINDOW_S = 60.0
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SOURCE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Rejection(ProblemError):
    def __init__(self, status: int, detail: str, outcome: str, **kw: Any) -> None:
        super().__init__(status, detail, **kw)
        self.outcome = outcome


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.post(
    "/v1/webhooks/{source_id}",
    status_code=202,
    responses={
        200: {"description": "duplicate or ignored"},
        202: {"description": "accepted and durably stored"},
        401: {"description": "bad signature or timestamp"},
        403: {"description": "address not allowed, source disabled or blocked"},
        404: {"description": "unknown source"},
        413: {"description": "body too large"},
        415: {"description": "not application/json"},
        422: {"description": "payload fails its schema"},
        429: {"description": "rate limited"},
        503: {"description": "could not be stored"},
    },
)
async def receive(source_id: str, request: Request) -> Response:
    ctx: AppContext = request.app.state.ctx
    started = time.perf_counter()
    label = "unknown"
    outcome = "error"
    delivery_id: str | None = None
    try:
        source = await _source(ctx, source_id)
        label = source.id
        status, body, outcome, delivery_id = await _handle(ctx, source, request)
        return _json(status, body)
    except ProblemError as exc:
        outcome = getattr(exc, "outcome", None) or _outcome_for(exc.status)
        return problem_response(
            exc.status,
            exc.detail,
            errors=exc.errors,
            headers=exc.headers,
            instance=request.url.path,
            extra=exc.extra,
        )
    finally:
        elapsed = time.perf_counter() - started
        WEBHOOK_ACK.observe(elapsed)
        WEBHOOKS_RECEIVED.labels(label, outcome).inc()
        log.info(
            "webhook %s",
            outcome,
            extra={
                "source": label,
                "delivery_id": delivery_id,
                "outcome": outcome,
                "latency_ms": round(elapsed * 1000, 2),
            },
        )


async def _source(ctx: AppContext, source_id: str) -> ActiveSource:
    if not SOURCE_ID.fullmatch(source_id):
        raise Rejection(404, "no such source", "not_found")
    try:
        source = await ctx.sources.lookup(source_id) if ctx.sources else None
    except Exception as exc:
        log.error("could not load source %s: %s", source_id, type(exc).__name__)
        raise Rejection(
            503,
            "the source could not be loaded; retry later",
            "unavailable",
            headers={"Retry-After": "5"},
        ) from None
    if source is None:
        raise Rejection(404, f"no source {source_id}", "not_found")
    return source


def _outcome_for(status: int) -> str:
    return {
        400: "invalid",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        413: "too_large",
        415: "unsupported_media_type",
        422: "invalid",
        429: "rate_limited",
        503: "unavailable",
    }.get(status, "error")


async def _handle(
    ctx: AppContext, source: ActiveSource, request: Request
) -> tuple[int, dict[str, Any], str, str | None]:
    settings = ctx.settings
    now = datetime.now(UTC)
    if not source.enabled:
        raise Rejection(403, f"source {source.id} is disabled", "forbidden")
    if source.blocked_until is not None and source.blocked_until > now:
        raise Rejection(
            403,
            f"source {source.id} is blocked until {source.blocked_until.isoformat()} after "
            "repeated authentication failures",
            "blocked",
        )
    if source.networks:  # the caller's address matters only to an allowlist
        peer = request.client.host if request.client else None
        addr = client_ip(peer, request.headers.getlist("x-forwarded-for"), ctx.trusted_proxies)
        if not allowed(addr, source.networks):
            raise Rejection(
                403, f"address {addr} is not allowed for source {source.id}", "forbidden"
            )
    _rate_limit(ctx, source)
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise Rejection(
            415,
            f"the body must be application/json, not '{ctype or 'nothing'}'",
            "unsupported_media_type",
        )
    raw = await read_limited(request, settings.max_body_bytes)
    tolerance = source.tolerance_s or settings.webhook_tolerance.total_seconds()
    try:
        verified = verify(
            source.scheme,
            source.secrets_now(now),
            request.headers,
            raw,
            tolerance_s=tolerance,
            now=now.timestamp(),
        )
    except SignatureError as exc:
        await _auth_failed(ctx, source)
        raise Rejection(401, f"signature check failed: {exc.reason}", "unauthorized") from None
    body = parse_json(raw, settings.max_json_depth)
    delivery_id = verified.delivery_id
    foreign_type = verified.event_type
    if source.scheme == "stripe":
        delivery_id, foreign_type = stripe_ids(body)
    if foreign_type is None and isinstance(body, dict) and isinstance(body.get("type"), str):
        foreign_type = body["type"]
    if not delivery_id:
        where = {
            "standard": "webhook-id header",
            "github": "X-GitHub-Delivery header",
            "stripe": "body field 'id'",
            "hmac": "X-Event-Id header",
        }[source.scheme]
        raise Rejection(
            422,
            f"the delivery id is missing ({where})",
            "invalid",
            errors=[{"loc": ["header" if "header" in where else "body", where], "msg": "required"}],
        )
    if len(delivery_id) > 200:
        raise Rejection(422, "the delivery id is longer than 200 characters", "invalid")
    if CONTROL.search(delivery_id):
        raise Rejection(422, "the delivery id contains control characters", "invalid")
    native = _to_native(source, body, foreign_type, request)
    deal_id = native[1].get("deal_id") if native else None
    if isinstance(deal_id, str) and CONTROL.search(deal_id):
        raise Rejection(
            422,
            "the deal id contains control characters",
            "invalid",
            errors=[{"loc": ["body", "data", "deal_id"], "msg": "control characters"}],
        )
    if foreign_type is not None:
        foreign_type = CONTROL.sub("", foreign_type)[:100] or "unknown"
    headers = _kept_headers(request)
    event = NewEvent(
        id=new_id("evt"),
        source_id=source.id,
        delivery_id=delivery_id,
        type=native[0] if native else (foreign_type or "unknown")[:100],
        status="accepted" if native else "ignored",
        deal_id=deal_id,
        payload=native[1] if native else {},
        raw_body=raw,
        headers=headers,
        body_sha256=hashlib.sha256(raw).hexdigest(),
        received_at=now,
    )
    try:
        event_id, duplicate = await ctx.writer.accept(event)
    except Exception:
        raise Rejection(
            503,
            "the event could not be stored; retry later",
            "unavailable",
            headers={"Retry-After": "5"},
        ) from None
    if duplicate:
        return 200, {"event_id": event_id, "status": "duplicate"}, "duplicate", delivery_id
    if native is None:
        return 200, {"event_id": event_id, "status": "ignored"}, "ignored", delivery_id
    if ctx.relay is not None:
        ctx.relay.nudge()
    return 202, {"event_id": event_id, "status": "accepted"}, "accepted", delivery_id


def _kept_headers(request: Request) -> dict[str, str]:
    """The headers worth keeping with the event (one pass; the first of a repeated header)."""
    kept: dict[str, str] = {}
    for raw_name, raw_value in request.headers.raw:
        name = raw_name.decode("latin-1").lower()
        if name in KEPT and name not in kept:
            kept[name] = raw_value.decode("latin-1")
    return kept


def _rate_limit(ctx: AppContext, source: ActiveSource) -> None:
    limiter = ctx.limiter
    if limiter is None:
        return
    settings = ctx.settings
    checks = [("global", settings.global_rate_per_second, settings.global_rate_burst)]
    if source.rate_per_second and source.rate_burst:
        checks.insert(0, (f"source:{source.id}", source.rate_per_second, source.rate_burst))
    for key, rate, burst in checks:
        try:
            decision = limiter.take(key, rate, burst)
        except Exception as exc:  # the shared limiter is down: fail open, loudly
            log.warning("rate limiter unavailable (%s); not limiting", type(exc).__name__)
            return
        if not decision.allowed:
            retry = max(1, int(decision.retry_after + 0.999))
            scope = "this source's" if key != "global" else "the global"
            raise Rejection(
                429,
                f"over {scope} rate limit of {rate:g}/s (burst {burst})",
                "rate_limited",
                headers={"Retry-After": str(retry)},
            )


async def _auth_failed(ctx: AppContext, source: ActiveSource) -> None:
    limiter = ctx.limiter
    settings = ctx.settings
    if limiter is None:
        return
    try:
        tripped = limiter.auth_failure(
            f"auth:{source.id}", settings.auth_failure_limit, AUTH_WINDOW_S
        )
    except Exception as exc:  # the shared limiter is down: the 401 stands, no block
        log.warning("could not count an authentication failure: %s", type(exc).__name__)
        return
    if not tripped:
        return
    until = datetime.now(UTC) + settings.auth_block
    try:
        await asyncio.to_thread(_block, ctx, source.id, until)
    except Exception as exc:
        log.error("could not block source %s: %s", source.id, type(exc).__name__)
        return
    if ctx.sources is not None:
        ctx.sources.forget(source.id)
    SOURCES_BLOCKED.labels(source.id).inc()
    log.warning(
        "source %s blocked until %s after %d authentication failures in %ds",
        source.id,
        until.isoformat(),
        settings.auth_failure_limit,
        int(AUTH_WINDOW_S),
        extra={"source": source.id, "outcome": "blocked"},
    )


def _block(ctx: AppContext, source_id: str, until: datetime) -> None:
    with ctx.db.session() as session:
        row = session.get(Source, source_id)
        if row is not None and (row.blocked_until is None or row.blocked_until < until):
            row.blocked_until = until
            session.add(row)
            session.commit()


def _to_native(
    source: ActiveSource, body: Any, foreign_type: str | None, request: Request
) -> tuple[str, dict[str, Any]] | None:
    """The native (type, data), or None when the source does not map this event type."""
    compiled = source.compiled
    if compiled is not None:
        document = {
            "body": body,
            "headers": {k: v for k, v in request.headers.items() if k.startswith("x-")},
            "event_type": foreign_type,
        }
        try:
            mapped = compiled.apply(document)
        except MappingError as exc:
            raise Rejection(422, str(exc), "invalid", errors=exc.errors) from None
        if mapped is None:
            return None
        native_type, data = mapped
        return _validated({"type": native_type, "data": data}, ("mapped",))
    if source.scheme == "github":
        return None
    if isinstance(body, dict) and isinstance(body.get("type"), str):
        if body["type"] not in EVENT_TYPES:
            return None  # a type dealflow does not know: acknowledged, not processed
    return _validated(body, ("body",))


def _validated(envelope: Any, loc: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    try:
        return validate_envelope(envelope, base_loc=loc)
    except EnvelopeError as exc:
        raise Rejection(
            422,
            "the event does not match its schema: "
            + "; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in exc.problems),
            "invalid",
            errors=[{"loc": p.loc, "msg": p.msg} for p in exc.problems],
        ) from None


PREFIX = "/v1/webhooks/"


def is_ingress(scope: dict[str, Any]) -> bool:
    path: str = scope.get("path", "")
    return (
        scope.get("type") == "http"
        and scope.get("method") == "POST"
        and path.startswith(PREFIX)
        and "/" not in path[len(PREFIX) :]
    )


async def serve_ingress(app: Any, scope: dict[str, Any], receive_: Any, send: Any) -> None:
    """Answer ``POST /v1/webhooks/{source_id}`` straight from the ASGI scope.

    The same handler as the FastAPI route above (which stays for the OpenAPI document), minus
    FastAPI's routing, dependency solving and middleware layers: profiled, those were about
    half of the CPU time of a webhook request, and the ingress is the hot path."""
    scope["app"] = app
    request = Request(scope, receive_)
    try:
        response = await receive(scope["path"][len(PREFIX) :], request)
    except Exception as exc:
        response = await unexpected(request, exc)
    await response(scope, receive_, send)
