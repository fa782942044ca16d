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


class _Formatter(string.Formatter):
    """Plain ``{name}`` placeholders only: no attribute or index access (``{x.__class__}``),
    no positional fields; an unknown name is left as it is."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, str]:
        if not field_name.isidentifier():
            raise ValueError(f"placeholder {{{field_name}}} is not a plain name")
        if field_name not in kwargs:
            return "{" + field_name + "}", field_name
        return kwargs[field_name], field_name

    def format_field(self, value: Any, format_spec: str) -> Any:
        try:
            return super().format_field(value, format_spec)
        except (ValueError, TypeError):
            return str(value)


def render(template: str, context: dict[str, Any]) -> str:
    text = BUILTIN.get(template, template)
    try:
        return _Formatter().vformat(text, (), context)
    except (ValueError, IndexError, AttributeError, KeyError):
        return text
