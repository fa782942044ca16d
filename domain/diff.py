"""What changed between two versions of a pipeline, field by field.

:func:`diff_specs` compares two :class:`~domain.pipeline.PipelineSpec` documents (as JSON) and
returns a document a person can read and a program can use:

``{"pipeline": [{"field", "before", "after"}],          # name, description, type, currency...
  "stages": {"added": [{"key", "index", "stage"}], "removed": [{"key", "index", "stage"}],
             "changed": [{"key", "changes": [{"field", "before", "after"}]}],
             "order": {"before": [...], "after": [...]} | null},
  "rules": [{"field", "before", "after"}],
  "automations": {"added": [...], "removed": [...], "changed": [{"name", "changes": [...]}]},
  "summary": "2 stages changed, 1 automation added", "changed": bool}``

Stages are matched by key and automations by name (a repeated name is matched by its
occurrence: the second "Notify" with the second "Notify"). Nested fields (``sla.target``,
``approval.approvers``) are compared leaf by leaf and named with dots; lists are compared whole.
"""

from __future__ import annotations

from typing import Any

from domain.pipeline import PipelineSpec

__all__ = ["diff_specs"]

_TOP_FIELDS = ("name", "description", "type", "currency", "probability_mode", "template")


def _as_json(spec: PipelineSpec | dict[str, Any]) -> dict[str, Any]:
    if isinstance(spec, PipelineSpec):
        return spec.model_dump(mode="json")
    return PipelineSpec.model_validate(spec).model_dump(mode="json")


def _field_changes(before: Any, after: Any, prefix: str = "") -> list[dict[str, Any]]:
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[dict[str, Any]] = []
        for key in [*before, *(k for k in after if k not in before)]:
            name = f"{prefix}.{key}" if prefix else str(key)
            out.extend(_field_changes(before.get(key), after.get(key), name))
        return out
    if before == after:
        return []
    return [{"field": prefix, "before": before, "after": after}]


def _keyed(items: list[dict[str, Any]], key: str) -> dict[str, tuple[int, dict[str, Any]]]:
    out: dict[str, tuple[int, dict[str, Any]]] = {}
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        name = str(item.get(key))
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name} #{seen[name]}"
        out[label] = (index, item)
    return out


def _collection(
    before: list[dict[str, Any]], after: list[dict[str, Any]], key: str, item_name: str
) -> dict[str, Any]:
    old, new = _keyed(before, key), _keyed(after, key)
    added = [
        {key: label, "index": index, item_name: item}
        for label, (index, item) in new.items()
        if label not in old
    ]
    removed = [
        {key: label, "index": index, item_name: item}
        for label, (index, item) in old.items()
        if label not in new
    ]
    changed = []
    for label, (_, item) in new.items():
        if label in old:
            changes = _field_changes(old[label][1], item)
            if changes:
                changed.append({key: label, "changes": changes})
    return {"added": added, "removed": removed, "changed": changed}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def diff_specs(
    before: PipelineSpec | dict[str, Any], after: PipelineSpec | dict[str, Any]
) -> dict[str, Any]:
    """Every difference from ``before`` to ``after`` (see the module docstring for the shape)."""
    a, b = _as_json(before), _as_json(after)
    pipeline = []
    for name in _TOP_FIELDS:
        pipeline.extend(_field_changes(a.get(name), b.get(name), name))
    pipeline.extend(_field_changes(a.get("calendar"), b.get("calendar"), "calendar"))

    stages = _collection(a["stages"], b["stages"], "key", "stage")
    old_order = [s["key"] for s in a["stages"]]
    new_order = [s["key"] for s in b["stages"]]
    common_old = [k for k in old_order if k in new_order]
    common_new = [k for k in new_order if k in old_order]
    reordered = common_old != common_new
    stages["order"] = {"before": old_order, "after": new_order} if reordered else None

    rules = _field_changes(a.get("rules"), b.get("rules"), "")
    for change in rules:
        change["field"] = change["field"].lstrip(".")
    automations = _collection(a["automations"], b["automations"], "name", "automation")

    parts = []
    for label, group in (("stage", stages), ("automation", automations)):
        for verb in ("added", "removed", "changed"):
            if group[verb]:
                parts.append(f"{_plural(len(group[verb]), label)} {verb}")
    if reordered:
        parts.append("stages reordered")
    if rules:
        parts.append("movement rules changed")
    if pipeline:
        parts.append(", ".join(c["field"] for c in pipeline) + " changed")
    return {
        "changed": bool(parts),
        "summary": "; ".join(parts) if parts else "no changes",
        "pipeline": pipeline,
        "stages": stages,
        "rules": rules,
        "automations": automations,
    }
