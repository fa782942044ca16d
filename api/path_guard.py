"""Paths and query strings with a NUL character are refused before routing: no id or filter can
hold one (PostgreSQL cannot even compare a string with a NUL in it, which made every such
lookup a 500), so a path is a 404 and a query a 422, as problems."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

QUERY_ERRORS = [{"loc": ["query"], "msg": "NUL character"}]


def nul_in(scope: dict[str, Any]) -> tuple[int, str, list[dict[str, Any]] | None] | None:
    """The refusal (status, detail, errors) of a request whose path or query holds a NUL."""
    path = scope.get("path", "")
    if "\x00" in path or b"%00" in scope.get("raw_path", b"").lower():
        return 404, "no such resource: the path holds a NUL character", None
    query: bytes = scope.get("query_string", b"")
    if query and b"\x00" in unquote_to_bytes(query):
        return 422, "the query string holds a NUL character", QUERY_ERRORS
    return None
