"""Message templates for notifications and tasks: built-in names, or text with {placeholders}."""

from __future__ import annotations

import string
from typing import Any

BUILTIN: dict[str, str] = {
    "approval_requested": "Deal {title} ({deal_id}) waits for your approval to move to {to_stage}"
    " (approval {approval_id}).",
    "approval_escalated": "Approval {approval_id} for deal {title} ({deal_id})"
    " was escalated to you.",
    "sla_breached": "The SLA of deal {title} ({deal_id}) in stage {stage} is breached.",
    "deal_rotting": "Deal {title} ({deal_id}) has had no activity in stage {stage} for too long.",
}


class _Missing(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(template: str, context: dict[str, Any]) -> str:
    text = BUILTIN.get(template, template)
    try:
        return string.Formatter().vformat(text, (), _Missing(context))
    except (ValueError, IndexError, AttributeError):
        return text
