"""RFC 9457 problem documents for every error the API returns."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from domain.deal import Problem

log = logging.getLogger("dealflow.api")

PROBLEM_TYPE = "https://dealflow.dev/problems/"
TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}
SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    429: "rate-limited",
    500: "internal",
    503: "unavailable",
}


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: Iterable[Problem | dict[str, Any]] | None = None,
        slug: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = [
            e if isinstance(e, dict) else {"loc": e.loc, "msg": e.msg, "code": e.code}
            for e in (errors or [])
        ]
        self.slug = slug or SLUGS.get(status, "error")
        self.title = title or TITLES.get(status, "Error")
        self.headers = headers or {}
        self.extra = extra or {}


def problem_response(
    status: int,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    slug: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + (slug or SLUGS.get(status, "error")),
        "title": title or TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


async def send_problem(
    scope: dict[str, Any],
    receive: Any,
    send: Any,
    status: int,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
) -> None:
    """Answer with a problem document straight from ASGI code (before routing)."""
    response = problem_response(status, detail, errors=errors, instance=scope.get("path"))
    await response(scope, receive, send)


def _loc_msg(err: dict[str, Any]) -> dict[str, Any]:
    return {"loc": list(err.get("loc", [])), "msg": err.get("msg", "invalid")}


def install(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> Response:
        return problem_response(
            exc.status,
            exc.detail,
            errors=exc.errors,
            slug=exc.slug,
            title=exc.title,
            headers=exc.headers,
            instance=request.url.path,
            extra=exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = [_loc_msg(e) for e in exc.errors()]
        what = ", ".join(".".join(str(p) for p in e["loc"]) for e in errors[:5])
        return problem_response(
            422,
            f"the request is invalid: {what}",
            errors=errors,
            instance=request.url.path,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "")
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path}"
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return problem_response(
            exc.status_code,
            detail,
            headers=getattr(exc, "headers", None),
            instance=request.url.path,
        )

    app.exception_handler(Exception)(unexpected)


async def unexpected(request: Request, exc: Exception) -> Response:
    """The 500 problem for an error nothing handled (logged with its traceback)."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        500, "an unexpected error occurred; it has been logged", instance=request.url.path
    )
