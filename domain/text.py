"""Strings people give the API (names, titles, subjects, comments, ids), without the control
characters that have no business in them.

PostgreSQL ``text`` cannot hold NUL at all (the INSERT fails), and the other C0 control
characters only hide what a string says. So:

* :data:`NoControl` (and :data:`Text`) refuses C0 control characters (U+0000-U+001F) other
  than tab, line feed and carriage return (so a comment may have lines);
* :data:`NoControlAtAll` refuses every control character (C0 and DEL), as the ingress does for
  ids;
* :data:`NulFreeJson` is for free-form JSON (a deal's ``fields``): anything but NUL, in a key
  or a string value at any depth (PostgreSQL's ``json`` keeps ``\\u0000`` escapes, but the text
  taken out of one cannot hold it: a field copied to the owner, or read with ``->>``).

Each refusal is a validation error of the field it is in, saying which character and where.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_ID_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_JSON_DEPTH = 64


def _refuse(found: re.Match[str], allowed: str) -> PydanticCustomError:
    return PydanticCustomError(
        "control_character",
        "must not contain control characters{allowed}: found U+{code} at position {position}",
        {"allowed": allowed, "code": f"{ord(found.group()):04X}", "position": found.start()},
    )


def check_text(value: str) -> str:
    """``value`` unless it holds a C0 control character other than tab, LF and CR."""
    if found := _TEXT_CONTROL.search(value):
        raise _refuse(found, " (other than tab and newline)")
    return value


def check_id_text(value: str) -> str:
    """``value`` unless it holds any control character (C0 or DEL)."""
    if found := _ID_CONTROL.search(value):
        raise _refuse(found, "")
    return value


def _nul_in(value: Any, path: str, depth: int = 0) -> str | None:
    """Where a NUL is in ``value`` (a JSON value), ``None`` when there is none."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if depth > MAX_JSON_DEPTH:
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and "\x00" in key:
                return f"the key {where!r}"
            if (found := _nul_in(item, where, depth + 1)) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _nul_in(item, f"{path}[{index}]", depth + 1)) is not None:
                return found
    return None


def check_nul_free(value: Any) -> Any:
    """``value`` (any JSON) unless a key or a string in it holds NUL (U+0000)."""
    found = _nul_in(value, "")
    if found is not None:
        raise PydanticCustomError(
            "nul_character",
            "must not contain the NUL character (U+0000): found in {where}",
            {"where": found if found.startswith("the key") else (found or "the value")},
        )
    return value


NoControl = AfterValidator(check_text)
"""Metadata for a string: no C0 control characters but tab and newline. Put it after the
length limits, ``Annotated[str, StringConstraints(max_length=200), NoControl]``, so that a too
long string is named as such."""

NoControlAtAll = AfterValidator(check_id_text)
"""Metadata for an id or another one-word string: no control character at all."""

NulFreeJson = AfterValidator(check_nul_free)
"""Metadata for a JSON-valued field: ``Annotated[dict[str, Any], NulFreeJson]``."""

Text = Annotated[str, NoControl]
"""A string of any length without C0 control characters but tab and newline."""
