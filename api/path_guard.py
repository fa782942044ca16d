"""Paths and query strings with a NUL character are refused before routing: no id or filter can
hold one (PostgreSQL cannot even compare a string with a NUL in it, which made every such
lookup a 500), so a path is a 404 and a query a 422, as problems."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from api.problems import problem_response


def nul_in(scope: dict[str, Any]) -> tuple[int, str] | None:
    """The refusal for a request whose path or query holds a NUL, else None."""
    path = scope.get("path", "")
    if "\x00" in path or b"%00" in scope.get("raw_path", b"").lower():
        return 404, "no such resource: the path holds a NUL character"
    query: bytes = scope.get("query_string", b"")
    if query and b"\x00" in unquote_to_bytes(query):
        return 422, "the query string holds a NUL character"
    return None


async def refuse(scope: dict[str, Any], receive: Any, send: Any, status: int, detail: str) -> None:
    errors = [{"loc": ["query"], "msg": "NUL character"}] if status == 422 else None
    response = problem_response(status, detail, errors=errors, instance=scope.get("path"))
    await response(scope, receive, send)
