"""Reading and parsing a webhook body within limits (size, depth, strict JSON)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from api.problems import ProblemError


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refusing (413) before reading it whole when it is over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ProblemError(400, "Content-Length is not a number") from None
        if size > limit:
            raise ProblemError(413, f"the body is {size} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ProblemError(413, f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _depth_ok(raw: bytes, max_depth: int) -> bool:
    """Bracket depth outside strings, without building anything (cheap, before parsing)."""
    depth = 0
    in_string = False
    escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):
            depth += 1
            if depth > max_depth:
                return False
        elif byte in (0x7D, 0x5D):
            depth -= 1
    return True


def parse_json(raw: bytes, max_depth: int) -> Any:
    """Strict JSON (UTF-8, no NaN/Infinity), nested at most ``max_depth`` levels (422 otherwise)."""
    if raw.count(b"{") + raw.count(b"[") > max_depth and not _depth_ok(raw, max_depth):
        raise ProblemError(
            422,
            f"the JSON body is nested deeper than {max_depth} levels",
            errors=[{"loc": ["body"], "msg": f"nesting deeper than {max_depth}"}],
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProblemError(
            422,
            f"the body is not valid JSON: {exc.msg}",
            errors=[{"loc": ["body"], "msg": f"invalid JSON at position {exc.pos}: {exc.msg}"}],
        ) from None
