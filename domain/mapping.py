"""Source mappings: turn a foreign payload (GitHub, Stripe, a form, another CRM) into a native
dealflow event with JMESPath expressions.

A mapping::

    {
      "type": "body.type",                  # where the foreign event type is (optional)
      "version": "body.api_version",        # where its schema version is (optional)
      "events": {
        "invoice.paid": {                   # one foreign type ...
          "type": "deal.updated",           # ... becomes this native type
          "data": {"deal_id": "body.data.object.metadata.deal_id",
                   "fields": {"paid": "`true`"}}
        },
        "crm.deal": {                       # versions side by side
          "versions": {
            "v1": {"type": "deal.created", "data": {...}},
            "v2": {"type": "deal.created", "data": {...}}
          }
        }
      }
    }

Expressions read the document ``{"body", "headers", "event_type"}``; results that are null
are left out. A foreign type the mapping does not list is ignored; a version it does not list
is an error (never guessed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from domain.events import EVENT_TYPES


class MappingError(ValueError):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(e["msg"] for e in errors))
        self.errors = errors


Template = ParsedResult | dict[str, "Template"]


@dataclass(frozen=True)
class Rule:
    type: str
    data: dict[str, Template]


@dataclass(frozen=True)
class CompiledMapping:
    type_expr: ParsedResult | None
    version_expr: ParsedResult | None
    events: dict[str, Rule | dict[str, Rule]]

    def foreign_type(self, document: dict[str, Any]) -> str | None:
        if self.type_expr is not None:
            value = self.type_expr.search(document)
        else:
            value = document.get("event_type") or (document.get("body") or {}).get("type")
        return value if isinstance(value, str) else None

    def apply(self, document: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The native (type, data), or None when the foreign type is not mapped."""
        foreign = self.foreign_type(document)
        if foreign is None or foreign not in self.events:
            return None
        rule = self.events[foreign]
        if isinstance(rule, dict):
            version = self.version_expr.search(document) if self.version_expr else None
            if not isinstance(version, str | int) or str(version) not in rule:
                known = ", ".join(sorted(rule))
                raise MappingError(
                    [
                        {
                            "loc": ["body", "version"],
                            "msg": f"version {version!r} of '{foreign}' is not mapped "
                            f"(mapped versions: {known})",
                        }
                    ]
                )
            rule = rule[str(version)]
        return rule.type, _render(rule.data, document)


def _render(template: dict[str, Template], document: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in template.items():
        result = _render(value, document) if isinstance(value, dict) else value.search(document)
        if result is not None:
            out[key] = result
    return out


def _compile_expr(expr: Any, loc: list[Any], errors: list[dict[str, Any]]) -> ParsedResult | None:
    if not isinstance(expr, str) or not expr.strip():
        errors.append({"loc": loc, "msg": "must be a JMESPath expression (a string)"})
        return None
    try:
        return jmespath.compile(expr)
    except JMESPathError as exc:
        errors.append({"loc": loc, "msg": f"invalid JMESPath expression: {exc}"})
        return None


def _compile_template(value: Any, loc: list[Any], errors: list[dict[str, Any]]) -> Template | None:
    if isinstance(value, dict):
        out: dict[str, Template] = {}
        for key, inner in value.items():
            compiled = _compile_template(inner, [*loc, key], errors)
            if compiled is not None:
                out[key] = compiled
        return out
    return _compile_expr(value, loc, errors)


def _compile_rule(value: Any, loc: list[Any], errors: list[dict[str, Any]]) -> Rule | None:
    if not isinstance(value, dict):
        errors.append({"loc": loc, "msg": "must be an object with 'type' and 'data'"})
        return None
    unknown = set(value) - {"type", "data"}
    if unknown:
        errors.append({"loc": loc, "msg": f"unknown keys {sorted(unknown)}"})
    native = value.get("type")
    if native not in EVENT_TYPES:
        errors.append({"loc": [*loc, "type"], "msg": f"must be one of {', '.join(EVENT_TYPES)}"})
    data = value.get("data")
    if not isinstance(data, dict) or not ({"deal_id", "deal_ref"} & set(data)):
        errors.append(
            {
                "loc": [*loc, "data"],
                "msg": "must be an object with 'deal_id' (or 'deal_ref', to find the deal "
                "by an external id)",
            }
        )
        return None
    template = _compile_template(data, [*loc, "data"], errors)
    if native not in EVENT_TYPES or not isinstance(template, dict):
        return None
    return Rule(type=native, data=template)


def compile_mapping(mapping: Any) -> CompiledMapping:
    errors: list[dict[str, Any]] = []
    base = ["body", "mapping"]
    if not isinstance(mapping, dict):
        raise MappingError([{"loc": base, "msg": "must be an object"}])
    unknown = set(mapping) - {"type", "version", "events"}
    if unknown:
        errors.append({"loc": base, "msg": f"unknown keys {sorted(unknown)}"})
    type_expr = (
        _compile_expr(mapping["type"], [*base, "type"], errors) if "type" in mapping else None
    )
    version_expr = (
        _compile_expr(mapping["version"], [*base, "version"], errors)
        if "version" in mapping
        else None
    )
    events_in = mapping.get("events")
    events: dict[str, Rule | dict[str, Rule]] = {}
    if not isinstance(events_in, dict) or not events_in:
        errors.append({"loc": [*base, "events"], "msg": "must map at least one event type"})
    else:
        for foreign, value in events_in.items():
            loc = [*base, "events", foreign]
            if isinstance(value, dict) and "versions" in value:
                versions = value["versions"]
                if not isinstance(versions, dict) or not versions:
                    errors.append({"loc": [*loc, "versions"], "msg": "must list versions"})
                    continue
                if version_expr is None:
                    errors.append(
                        {"loc": [*base, "version"], "msg": "versions need a 'version' expression"}
                    )
                compiled = {
                    str(v): r
                    for v, spec in versions.items()
                    if (r := _compile_rule(spec, [*loc, "versions", v], errors)) is not None
                }
                events[foreign] = compiled
            else:
                rule = _compile_rule(value, loc, errors)
                if rule is not None:
                    events[foreign] = rule
    if errors:
        raise MappingError(errors)
    return CompiledMapping(type_expr=type_expr, version_expr=version_expr, events=events)
