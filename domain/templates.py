"""Shipped pipeline templates: a starting point an admin fills in instead of writing stages.

``POST /v1/pipelines`` with ``"template": "sales"`` (or ``"support"``) and no ``stages`` gets the
template's stages, and its movement rules and automations unless the payload brings its own.
The admin's ``name``, ``description``, ``currency`` and so on always win; ``type`` defaults to
the template's. Templates are plain data, so they can be listed (``GET /v1/pipeline-templates``)
and validated like any pipeline (a test checks that each one is valid).
"""

from __future__ import annotations

import copy
from typing import Any

from domain.deal import Problem

__all__ = ["TEMPLATES", "apply_template", "template_summary"]

_SALES: dict[str, Any] = {
    "name": "Sales",
    "description": "A B2B sales funnel: lead to qualified to proposal to negotiation, won or lost.",
    "type": "sales",
    "probability_mode": "stage",
    "stages": [
        {
            "key": "lead",
            "name": "Lead",
            "probability": 10,
            "color": "#9E9E9E",
            "icon": "user-plus",
            "sla": {"target": "P1D", "warn_at": 0.75},
            "rotting": "P7D",
        },
        {
            "key": "qualified",
            "name": "Qualified",
            "probability": 25,
            "color": "#2196F3",
            "icon": "check-circle",
            "rotting": "P14D",
            "required_fields": ["contact_email"],
        },
        {
            "key": "proposal",
            "name": "Proposal",
            "probability": 50,
            "color": "#FF9800",
            "icon": "file-text",
            "rotting": "P14D",
            "validation": [
                {"expr": "value > `0`", "message": "a proposal needs a deal value above 0"}
            ],
        },
        {
            "key": "negotiation",
            "name": "Negotiation",
            "probability": 75,
            "color": "#9C27B0",
            "icon": "handshake",
            "rotting": "P14D",
        },
        {
            "key": "won",
            "name": "Won",
            "probability": 100,
            "color": "#4CAF50",
            "icon": "trophy",
            "outcome": "won",
        },
        {
            "key": "lost",
            "name": "Lost",
            "probability": 0,
            "color": "#F44336",
            "icon": "x-circle",
            "outcome": "lost",
        },
    ],
    "rules": {"skip": "deny", "backward": "allow"},
    "automations": [
        {
            "name": "Send the proposal",
            "trigger": {"on": "stage_entered", "stage": "proposal"},
            "actions": [
                {"do": "create_task", "template": "Send the proposal for {title}", "due_in": "P2D"}
            ],
        },
        {
            "name": "Lead SLA warning",
            "trigger": {"on": "sla_warning", "stage": "lead"},
            "actions": [
                {
                    "do": "notify",
                    "channel": "log",
                    "to": "owner",
                    "template": "Lead {title} ({deal_id}) must be contacted soon",
                }
            ],
        },
        {
            "name": "Deal won",
            "trigger": {"on": "stage_entered", "stage": "won"},
            "actions": [
                {
                    "do": "notify",
                    "channel": "log",
                    "to": "owner",
                    "template": "Deal {title} ({deal_id}) was won: {value} {currency}",
                }
            ],
        },
    ],
}

_SUPPORT: dict[str, Any] = {
    "name": "Support",
    "description": "A support queue: new tickets triaged within hours, then worked to resolution.",
    "type": "support",
    "probability_mode": "manual",
    "stages": [
        {
            "key": "new",
            "name": "New",
            "probability": 0,
            "color": "#9E9E9E",
            "icon": "inbox",
            "sla": {"target": "PT4H", "warn_at": 0.75},
        },
        {
            "key": "triaged",
            "name": "Triaged",
            "probability": 0,
            "color": "#2196F3",
            "icon": "tag",
            "required_fields": ["priority"],
            "sla": {"target": "P1D", "warn_at": 0.8},
        },
        {
            "key": "in_progress",
            "name": "In progress",
            "probability": 0,
            "color": "#FF9800",
            "icon": "tool",
            "rotting": "P3D",
        },
        {
            "key": "waiting_on_customer",
            "name": "Waiting on customer",
            "probability": 0,
            "color": "#FFC107",
            "icon": "clock",
            "rotting": "P7D",
        },
        {
            "key": "resolved",
            "name": "Resolved",
            "probability": 100,
            "color": "#4CAF50",
            "icon": "check",
            "outcome": "won",
        },
        {
            "key": "closed_unresolved",
            "name": "Closed unresolved",
            "probability": 0,
            "color": "#F44336",
            "icon": "x",
            "outcome": "lost",
        },
    ],
    "rules": {"skip": "allow", "backward": "allow"},
    "automations": [
        {
            "name": "Assign new tickets",
            "trigger": {"on": "stage_entered", "stage": "new"},
            "actions": [{"do": "assign_owner", "strategy": "by_field", "field": "assignee"}],
        },
        {
            "name": "Triage SLA warning",
            "trigger": {"on": "sla_warning", "stage": "new"},
            "actions": [
                {
                    "do": "notify",
                    "channel": "log",
                    "to": "owner",
                    "template": "Ticket {title} ({deal_id}) must be triaged soon",
                }
            ],
        },
        {
            "name": "Chase the customer",
            "trigger": {"on": "time_in_stage", "stage": "waiting_on_customer", "after": "P2D"},
            "actions": [
                {"do": "create_task", "template": "Follow up with the customer on {title}"}
            ],
        },
    ],
}

TEMPLATES: dict[str, dict[str, Any]] = {"sales": _SALES, "support": _SUPPORT}


def template_summary(key: str) -> dict[str, Any]:
    """What ``GET /v1/pipeline-templates`` shows of one template (the whole definition)."""
    template = copy.deepcopy(TEMPLATES[key])
    return {"key": key, **template}


def apply_template(payload: dict[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """``payload`` with its template's stages (and rules/automations) filled in.

    Only when ``template`` is set and ``stages`` is absent or empty; stages the admin sent are
    kept as they are. An unknown template is a problem (``unknown_pipeline_template``) reported
    with the pipeline's other problems.
    """
    name = payload.get("template")
    if name is None:
        return payload, []
    if not isinstance(name, str) or name not in TEMPLATES:
        known = ", ".join(repr(k) for k in TEMPLATES)
        return payload, [
            Problem(
                code="unknown_pipeline_template",
                loc=["template"],
                msg=f"{name!r} is not a pipeline template (templates: {known})",
            )
        ]
    if payload.get("stages"):
        return payload, []
    template = copy.deepcopy(TEMPLATES[name])
    out = dict(payload)
    out["stages"] = template["stages"]
    for key in ("rules", "automations"):
        if not out.get(key):
            out[key] = template[key]
    for key in ("type", "probability_mode", "description"):
        if out.get(key) is None:
            out[key] = template[key]
    return out, []
