"""Size budgets that keep a deal inside Temporal's limits (a payload over 2 MB fails the
workflow task that sends it, again and again, and jams the deal): a deal's fields are bounded,
and signals, activity inputs and the state carried across continue-as-new are cut to stay
well under the limit."""

from __future__ import annotations

import json
from typing import Any

MAX_DEAL_FIELDS_BYTES = 256 * 1024
"""A deal's ``fields``, as JSON: an event or a move that would make them larger is refused."""
PAYLOAD_BUDGET_BYTES = 1024 * 1024
"""What one signal (the relay's batch for a deal) or the events carried across
continue-as-new may take, as JSON: half of Temporal's 2 MB payload limit."""


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON (deterministic: usable in workflows)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return len(text.encode())


def fields_problem(current: dict[str, Any], changes: dict[str, Any] | None) -> str | None:
    """Why ``changes`` may not be applied to a deal's ``current`` fields (None if they fit)."""
    if not changes:
        return None
    size = json_size({**current, **changes})
    if size <= MAX_DEAL_FIELDS_BYTES:
        return None
    return (
        f"the deal's fields would take {size:,} bytes as JSON; a deal keeps at most "
        f"{MAX_DEAL_FIELDS_BYTES:,} (256 KiB)"
    )
