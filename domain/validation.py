"""Whole-pipeline checks: every problem with a pipeline definition, listed at once.

``domain.pipeline`` checks the shape of each part (types, ranges, formats); this module checks what
needs the whole pipeline: duplicate stages, references to stages that do not exist, triggers that
can never fire, invalid expressions, misplaced outcome stages, approvals that cannot escalate and
automations that would move a deal around forever. :func:`parse_and_validate` runs both and, when
the shape is wrong, still runs the whole-pipeline checks on what it could read, so that one 422
lists every problem (a probability of 150 *and* a duplicate key *and* a cycle).

Each :class:`~domain.deal.Problem` has a ``code`` (stable, for programs), a ``loc`` into the
submitted document (``["stages", 2, "key"]``, ``["automations", 0, "actions", 1, "stage"]``) and a
``msg`` for people. Codes: ``no_stages``, ``duplicate_stage_key``, ``duplicate_stage_name``,
``unknown_stage``, ``invalid_trigger``, ``invalid_expression``, ``missing_outcome``,
``misplaced_outcome_stage``, ``no_open_stage``, ``unknown_template``, ``invalid_action``,
``invalid_approval``, ``invalid_calendar``, ``sla_beyond_calendar`` (an SLA target longer than
the business calendar can count), ``automation_cycle``; and ``invalid`` for shape errors.

Automation cycles
-----------------
Only moves that happen *at once* can loop: an automation on ``stage_entered`` of A that moves the
deal to B fires as soon as the deal enters A; one on ``stage_exited`` of A fires as soon as it
leaves A. Time-based triggers (``time_in_stage``, ``sla_*``, ``rotting``) and ``field_changed``
wait for something else to happen, so they never loop by themselves. The check follows the deal
through the states "just entered Y, just left Z" (moving from Y to B enters B and leaves Y); a
move to the stage the deal is already in changes nothing. So ``entered A → B`` with
``entered B → A`` loops (``a → b → a``), ``entered A → B`` with ``exited A → A`` loops (entering
A leaves it at once, which brings the deal back), but ``exited A → B`` with ``exited B → A`` does
not (leaving A for X moves the deal from X to B, and there it stays). ``entered A → A`` (or a
``stage_entered`` on any stage that moves to A) is reported as the loop ``a → a``: at best it does
nothing. Conditions are not evaluated: a move that *can* loop is reported.
"""

from __future__ import annotations

import difflib
import string
import types
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pydantic
from pydantic import BaseModel, TypeAdapter

from domain.calendar import GUARANTEED_WEEKS, calendar_issues, max_business_time, working_week
from domain.deal import Problem
from domain.durations import format_duration
from domain.expressions import ExpressionError, compile_expression
from domain.pipeline import (
    INPUT_CONTEXT,
    Action,
    AssignOwner,
    AutomationSpec,
    BusinessCalendar,
    CreateTask,
    MoveToStage,
    Notify,
    PipelineSpec,
    StageSpec,
    TriggerSpec,
    ValidationRule,
)

TEMPLATE_FIELDS = frozenset(
    {
        "deal_id",
        "title",
        "stage",
        "status",
        "owner",
        "value",
        "currency",
        "pipeline_id",
        "test_mode",
    }
)
"""What a notification or task template may refer to: the context the engine gives every
effect (``Engine._context``)."""

__all__ = ["parse_and_validate", "problems_from_validation_error", "validate_pipeline"]

ARROW = " → "
MAX_CYCLES = 25
"""At most this many distinct cycles are reported (one is enough to refuse the pipeline)."""
_CYCLE_SEARCH_BUDGET = 200_000

_SLA_TRIGGERS = ("sla_warning", "sla_breached")
# The prefix of the placeholder keys and names used while salvaging a malformed payload: a
# private-use character, as placeholders must pass the models' own checks (no control character)
# and no one writes a stage key with it.
_OPAQUE = "\U000f0000"
# "Left some stage without stage_exited automations of its own": a node of the cycle search,
# never a stage key (a key cannot hold NUL).
_ELSEWHERE = "\x00elsewhere"


def _norm(text: str) -> str:
    return text.strip().casefold()


def _hours(value: timedelta) -> str:
    hours = value.total_seconds() / 3600
    return f"{hours:g} h"


class _Checker:
    def __init__(
        self,
        spec: PipelineSpec,
        known_templates: Iterable[str] | None,
        *,
        skip_outcomes: bool = False,
    ) -> None:
        self.spec = spec
        self.known_templates = None if known_templates is None else set(known_templates)
        self.skip_outcomes = skip_outcomes
        self.problems: list[Problem] = []
        self.stages: dict[str, StageSpec] = {}
        for stage in spec.stages:
            self.stages.setdefault(stage.key, stage)

    def add(self, code: str, loc: list[str | int], msg: str) -> None:
        self.problems.append(Problem(code=code, loc=loc, msg=msg))

    def run(self) -> list[Problem]:
        self.check_stages()
        self.check_outcomes()
        self.check_automations()
        self.check_calendar()
        self.check_cycles()
        return self.problems

    # -- stages -----------------------------------------------------------------------------------

    def check_stages(self) -> None:
        if not self.spec.stages:
            self.add("no_stages", ["stages"], "a pipeline needs at least one stage")
        first_key: dict[str, int] = {}
        first_name: dict[str, int] = {}
        for i, stage in enumerate(self.spec.stages):
            key, name = _norm(stage.key), _norm(stage.name)
            if key in first_key:
                j = first_key[key]
                self.add(
                    "duplicate_stage_key",
                    ["stages", i, "key"],
                    f"stage key {stage.key!r} is already used by stages[{j}]"
                    + ("" if self.spec.stages[j].key == stage.key else " (keys ignore case)"),
                )
            else:
                first_key[key] = i
            if name in first_name:
                j = first_name[name]
                self.add(
                    "duplicate_stage_name",
                    ["stages", i, "name"],
                    f"stage name {stage.name!r} is already used by stages[{j}] "
                    f"({self.spec.stages[j].key!r}; names ignore case)",
                )
            else:
                first_name[name] = i
            for j, rule in enumerate(stage.validation):
                self.check_expression(rule, ["stages", i, "validation", j, "expr"])
            self.check_approval(i, stage)

    def check_approval(self, i: int, stage: StageSpec) -> None:
        approval = stage.approval
        if approval is None:
            return
        loc: list[str | int] = ["stages", i, "approval"]
        if approval.timeout is None:
            if approval.escalate_to:
                self.add(
                    "invalid_approval",
                    [*loc, "timeout"],
                    "escalate_to is never used without a timeout: "
                    "set a timeout after which the approval escalates",
                )
        elif approval.on_timeout == "escalate":
            if not approval.escalate_to:
                self.add(
                    "invalid_approval",
                    [*loc, "escalate_to"],
                    "on_timeout 'escalate' needs at least one subject in escalate_to",
                )
        elif approval.escalate_to:
            self.add(
                "invalid_approval",
                [*loc, "escalate_to"],
                f"escalate_to is only used when on_timeout is 'escalate' "
                f"(it is {approval.on_timeout!r})",
            )

    def check_expression(self, rule: ValidationRule, loc: list[str | int]) -> None:
        try:
            compile_expression(rule.expr)
        except ExpressionError as exc:
            self.add("invalid_expression", loc, str(exc))

    def check_outcomes(self) -> None:
        stages = self.spec.stages
        if self.skip_outcomes or not stages:
            return
        outcomes = {s.outcome for s in stages if s.outcome}
        if not outcomes:
            return
        if outcomes != {"won", "lost"}:
            have, lack = ("won", "lost") if "won" in outcomes else ("lost", "won")
            self.add(
                "missing_outcome",
                ["stages"],
                f"a pipeline with a {have!r} stage also needs a {lack!r} stage",
            )
        open_indexes = [i for i, s in enumerate(stages) if s.outcome is None]
        if not open_indexes:
            self.add(
                "no_open_stage",
                ["stages"],
                "every stage is an outcome stage: a deal needs an open stage to start in",
            )
            return
        last_open = open_indexes[-1]
        for i, stage in enumerate(stages[:last_open]):
            if stage.outcome:
                self.add(
                    "misplaced_outcome_stage",
                    ["stages", i, "outcome"],
                    f"outcome stage {stage.key!r} ({stage.outcome}) must come after every open "
                    f"stage, but {stages[last_open].key!r} (stages[{last_open}]) follows it",
                )

    # -- automations ------------------------------------------------------------------------------

    def unknown_stage(self, key: str, loc: list[str | int], what: str) -> None:
        candidates = [k for k in self.stages if not k.startswith(_OPAQUE)]
        msg = f"{what} {key!r} is not a stage of this pipeline"
        close = difflib.get_close_matches(key, candidates, n=1) or [
            k for k in candidates if _norm(k) == _norm(key)
        ]
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        elif candidates:
            msg += f"; stages are {', '.join(repr(k) for k in candidates)}"
        self.add("unknown_stage", loc, msg)

    def check_automations(self) -> None:
        for i, automation in enumerate(self.spec.automations):
            self.check_trigger(i, automation.trigger)
            for j, condition in enumerate(automation.conditions):
                self.check_expression(condition, ["automations", i, "conditions", j, "expr"])
            for j, action in enumerate(automation.actions):
                self.check_action(["automations", i, "actions", j], action)

    def check_trigger(self, i: int, trigger: TriggerSpec) -> None:
        loc: list[str | int] = ["automations", i, "trigger"]
        stage = None
        if trigger.stage is not None:
            stage = self.stages.get(trigger.stage)
            if stage is None:
                self.unknown_stage(trigger.stage, [*loc, "stage"], "trigger stage")
        on = trigger.on
        if on == "time_in_stage" and trigger.after is None:
            self.add(
                "invalid_trigger",
                [*loc, "after"],
                "a time_in_stage trigger needs 'after', a duration such as 'P3D'",
            )
        if on == "field_changed" and not (trigger.field and trigger.field.strip()):
            self.add(
                "invalid_trigger",
                [*loc, "field"],
                "a field_changed trigger needs 'field', the name of the field to watch",
            )
        if on in _SLA_TRIGGERS or on == "rotting":
            attribute = "sla" if on in _SLA_TRIGGERS else "rotting"
            if stage is not None and getattr(stage, attribute) is None:
                self.add(
                    "invalid_trigger",
                    [*loc, "stage"],
                    f"stage {stage.key!r} has no {attribute}, so a {on} trigger on it never fires",
                )
            elif trigger.stage is None and not any(
                getattr(s, attribute) is not None for s in self.spec.stages
            ):
                self.add(
                    "invalid_trigger",
                    [*loc, "on"],
                    f"no stage has {'an' if attribute == 'sla' else 'a'} {attribute}, "
                    f"so a {on} trigger never fires",
                )

    def check_action(self, loc: list[str | int], action: Any) -> None:
        if isinstance(action, MoveToStage):
            if action.stage not in self.stages:
                self.unknown_stage(action.stage, [*loc, "stage"], "move_to_stage target")
        elif isinstance(action, Notify | CreateTask):
            self.check_placeholders([*loc, "template"], action.template)
            known = self.known_templates
            if known is not None and action.template not in known:
                listing = ", ".join(repr(t) for t in sorted(known)) or "none"
                self.add(
                    "unknown_template",
                    [*loc, "template"],
                    f"template {action.template!r} does not exist (known templates: {listing})",
                )
        elif isinstance(action, AssignOwner):
            if action.strategy == "by_field" and not (action.field and action.field.strip()):
                self.add(
                    "invalid_action",
                    [*loc, "field"],
                    "assign_owner with strategy 'by_field' needs 'field', the field naming "
                    "the owner",
                )

    def check_placeholders(self, loc: list[str | int], template: str) -> None:
        """A template's ``{placeholders}`` must be plain names of the deal's context."""
        try:
            fields = [
                name for _, name, _, _ in string.Formatter().parse(template) if name is not None
            ]
        except ValueError as exc:
            self.add("invalid_template", loc, f"the template cannot be read: {exc}")
            return
        for name in fields:
            if name not in TEMPLATE_FIELDS:
                hint = difflib.get_close_matches(name, sorted(TEMPLATE_FIELDS), n=1)
                self.add(
                    "unknown_template_field",
                    loc,
                    f"the template refers to {{{name}}}, which is not a deal field "
                    f"(known: {', '.join(sorted(TEMPLATE_FIELDS))})"
                    + (f"; did you mean {{{hint[0]}}}?" if hint else ""),
                )

    def check_calendar(self) -> None:
        if self.spec.calendar is None:
            return
        for sub_loc, msg in calendar_issues(self.spec.calendar):
            self.add("invalid_calendar", ["calendar", *sub_loc], msg)
        self.check_business_time(self.spec.calendar)

    def check_business_time(self, cal: BusinessCalendar) -> None:
        """SLA clocks (the only ones that count business time) must be able to add their
        target with the calendar, or entering the stage would fail."""
        bound = max_business_time(cal)
        if bound is None:
            return  # the calendar's own problems are reported
        week = working_week(cal)
        for i, stage in enumerate(self.spec.stages):
            if stage.sla is None or stage.sla.target <= bound:
                continue
            limit = format_duration(bound) if bound else "nothing"
            self.add(
                "sla_beyond_calendar",
                ["stages", i, "sla", "target"],
                f"SLA target {format_duration(stage.sla.target)} is more working time than the "
                f"business calendar can count: with {_hours(week)} of working time a week"
                + (f" and {len(set(cal.holidays))} holiday(s)" if cal.holidays else "")
                + f", a target can be at most {limit} of working time "
                f"({GUARANTEED_WEEKS} working weeks, about 100 years ahead)",
            )

    # -- cycles -----------------------------------------------------------------------------------

    def check_cycles(self) -> None:
        for cycle, automations in _find_cycles(self.spec, self.stages):
            names = ", ".join(repr(self.spec.automations[i].name) for i in sorted(automations))
            name = ARROW.join([*cycle, cycle[0]])
            self.add(
                "automation_cycle",
                ["automations", min(automations)],
                f"automation cycle {name}: these moves would repeat forever (automations {names})",
            )


Node = tuple[str, str | None]  # (stage just entered, stage just left)


def _find_cycles(
    spec: PipelineSpec, stages: Mapping[str, StageSpec]
) -> list[tuple[list[str], set[int]]]:
    """Distinct instantaneous loops, each as (stage keys in order, automation indexes on it)."""
    entered: dict[str | None, list[tuple[int, str]]] = defaultdict(list)
    exited: dict[str | None, list[tuple[int, str]]] = defaultdict(list)
    for i, automation in enumerate(spec.automations):
        trigger = automation.trigger
        if trigger.on not in ("stage_entered", "stage_exited"):
            continue
        if trigger.stage is not None and trigger.stage not in stages:
            continue
        table = entered if trigger.on == "stage_entered" else exited
        for action in automation.actions:
            if isinstance(action, MoveToStage) and action.stage in stages:
                table[trigger.stage].append((i, action.stage))
    if not entered and not exited:
        return []

    order = {key: i for i, key in reversed(list(enumerate(s.key for s in spec.stages)))}

    # Which stage was just left matters only through the stage_exited automations on it; every
    # other stage left behaves alike, so it is folded into _ELSEWHERE to keep the graph small.
    def left_state(stage: str | None) -> str | None:
        if stage is None or stage in exited:
            return stage
        return _ELSEWHERE

    def rank(node: Node) -> tuple[int, int]:
        left = node[1]
        return (order[node[0]], -2 if left is None else order.get(left, -1))

    def successors(node: Node) -> dict[Node, set[int]]:
        current, left = node
        moves = entered.get(current, []) + entered.get(None, [])
        if left is not None:
            moves = moves + exited.get(left, []) + exited.get(None, [])
        out: dict[Node, set[int]] = defaultdict(set)
        for automation, target in moves:
            if target != current:  # moving to the stage the deal is in changes nothing
                out[(target, left_state(current))].add(automation)
        return out

    # Explore every state a deal can be in right after a move.
    lefts = {left_state(z) for z in [None, *order]}
    graph: dict[Node, dict[Node, set[int]]] = {}
    pending: list[Node] = [(y, z) for y in order for z in lefts]
    while pending:
        node = pending.pop()
        if node in graph:
            continue
        graph[node] = successors(node)
        pending.extend(n for n in graph[node] if n not in graph)

    found: dict[tuple[str, ...], set[int]] = {}
    # "Entering A moves to A" is a loop of its own, however the engine treats a move to the stage
    # a deal is already in.
    for trigger_stage, moves in entered.items():
        for automation, target in moves:
            if trigger_stage in (None, target):
                found.setdefault((target,), set()).add(automation)
    budget = _CYCLE_SEARCH_BUDGET
    for component in _strongly_connected(graph, rank):
        if len(found) >= MAX_CYCLES or budget <= 0:
            break
        members = set(component)
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        for start in sorted(component, key=rank):
            # Elementary cycles through `start` that use only nodes ranked after it: each cycle is
            # found exactly once, from its lowest-ranked node.
            stack: list[tuple[Node, list[Node], set[int], list[Node]]] = [
                (start, [start], set(), sorted(graph[start], key=rank))
            ]
            on_path = {start}
            while stack and budget > 0 and len(found) < MAX_CYCLES:
                budget -= 1
                node, path, autos, todo = stack[-1]
                if not todo:
                    stack.pop()
                    on_path.discard(node)
                    continue
                nxt = todo.pop(0)
                edge = graph[node][nxt]
                if nxt == start:
                    _record(found, [n[0] for n in path], autos | edge, order)
                elif nxt in members and nxt not in on_path and rank(nxt) > rank(start):
                    on_path.add(nxt)
                    stack.append((nxt, [*path, nxt], autos | edge, sorted(graph[nxt], key=rank)))
            members.discard(start)
    ranked = sorted(found.items(), key=lambda item: (min(item[1]), [order[k] for k in item[0]]))
    return [(list(cycle), autos) for cycle, autos in ranked[:MAX_CYCLES]]


def _record(
    found: dict[tuple[str, ...], set[int]],
    cycle: list[str],
    automations: set[int],
    order: Mapping[str, int],
) -> None:
    rotations = [cycle[k:] + cycle[:k] for k in range(len(cycle))]
    canonical = tuple(min(rotations, key=lambda r: [order[s] for s in r]))
    found.setdefault(canonical, set()).update(automations)


def _strongly_connected(graph: Mapping[Node, Mapping[Node, Any]], rank: Any) -> list[list[Node]]:
    """Tarjan's algorithm, iterative; components in a deterministic order."""
    index: dict[Node, int] = {}
    low: dict[Node, int] = {}
    on_stack: set[Node] = set()
    stack: list[Node] = []
    components: list[list[Node]] = []
    counter = 0
    for root in sorted(graph, key=rank):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root], key=rank)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child], key=rank))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component, key=rank))
    components.sort(key=lambda c: rank(c[0]))
    return components


def validate_pipeline(
    spec: PipelineSpec, *, known_templates: set[str] | None = None
) -> list[Problem]:
    """Every whole-pipeline problem with ``spec`` (empty when it can be saved).

    ``known_templates``, when given, is the set of template names ``notify`` and ``create_task``
    actions may use; without it template names are not checked.
    """
    return _Checker(spec, known_templates).run()


# -- shape errors --------------------------------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _union_members(tp: Any) -> tuple[Any, ...] | None:
    if get_origin(tp) in (Union, types.UnionType):
        return tuple(_unwrap(a) for a in get_args(tp) if a is not type(None))
    return None


def _tag_of(model: Any) -> str | None:
    if isinstance(model, type) and issubclass(model, BaseModel) and "do" in model.model_fields:
        annotation = model.model_fields["do"].annotation
        if get_origin(annotation) is Literal:
            return get_args(annotation)[0]
    return None


def _clean_loc(loc: Iterable[str | int], root: Any = PipelineSpec) -> list[str | int]:
    """A pydantic error location without pydantic's union-member labels, as submitted."""
    out: list[str | int] = []
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        members = _union_members(tp)
        if members is not None and len(members) == 1:
            tp, members = members[0], None
        if members is not None:
            # A label naming which member of a union failed ("move_to_stage", "list[str]"...).
            tp = next((m for m in members if _tag_of(m) == part), Any)
            continue
        if isinstance(part, int):
            out.append(part)
            args = get_args(tp)
            tp = args[0] if get_origin(tp) in (list, tuple) and args else Any
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            out.append(part)
            field = tp.model_fields.get(str(part))
            tp = field.annotation if field is not None else Any
        else:
            out.append(part)
            args = get_args(tp)
            tp = args[1] if get_origin(tp) is dict and len(args) == 2 else Any
    return out


def _readable(error: Mapping[str, Any]) -> str:
    kind = error.get("type")
    msg = str(error.get("msg", "invalid"))
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "field required"
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg


def problems_from_validation_error(
    exc: pydantic.ValidationError, *, root: Any = PipelineSpec
) -> list[Problem]:
    """pydantic's errors as Problems (code ``invalid``), one per location, in order.

    ``root`` is the model that was validated; it is used to drop pydantic's union-member labels
    from locations (``["rules", "skip"]``, not ``["rules", "skip", "literal['allow','deny']"]``).
    """
    merged: dict[tuple[str | int, ...], list[str]] = {}
    for error in exc.errors():
        loc = tuple(_clean_loc(error.get("loc", ()), root))
        messages = merged.setdefault(loc, [])
        msg = _readable(error)
        if msg not in messages:
            messages.append(msg)
    problems = []
    for loc, messages in merged.items():
        prefix = "Input should be "
        if len(messages) > 1 and all(m.startswith(prefix) for m in messages):
            text = prefix + " or ".join(m[len(prefix) :] for m in messages)
        else:
            text = "; ".join(messages)
        problems.append(Problem(code="invalid", loc=list(loc), msg=text))
    return problems


# -- salvaging a malformed payload ---------------------------------------------------------------

_ACTION = TypeAdapter(Action)
_HARMLESS_ACTION = {"do": "set_field", "field": _OPAQUE}
_HARMLESS_RULE = {"expr": "`true`"}
_HARMLESS_TRIGGER = {"on": "field_changed", "field": _OPAQUE}


def _salvage_model(
    model: type[BaseModel], raw: Any, placeholders: Mapping[str, Any]
) -> tuple[BaseModel | None, set[str]]:
    """``raw`` as ``model``, with invalid fields replaced by placeholders or dropped."""
    if not isinstance(raw, dict):
        return None, set()
    data = dict(raw)
    invalid: set[str] = set()
    for _ in range(len(data) + len(model.model_fields) + 2):
        try:
            return model.model_validate(data, context=INPUT_CONTEXT), invalid
        except pydantic.ValidationError as exc:
            bad = {str(e["loc"][0]) for e in exc.errors() if e.get("loc")}
            if not bad:
                return None, invalid
            progress = False
            for name in bad:
                invalid.add(name)
                if name in placeholders and data.get(name) != placeholders[name]:
                    data[name] = placeholders[name]
                    progress = True
                elif name in data and name not in placeholders:
                    del data[name]
                    progress = True
            if not progress:
                return None, invalid
    return None, invalid


def _salvage_items(items: Any, validate: Any, harmless: Any) -> Any:
    if not isinstance(items, list):
        return items
    out = []
    for item in items:
        try:
            out.append(validate(item, context=INPUT_CONTEXT))
        except pydantic.ValidationError:
            out.append(validate(harmless, context=INPUT_CONTEXT))
    return out


def _salvage_stage(i: int, raw: Any) -> tuple[StageSpec, bool]:
    """A usable stand-in for stages[i]; the flag says whether its outcome is unknown."""
    placeholder_key = f"{_OPAQUE}stage-{i}"
    if isinstance(raw, dict):
        raw = dict(raw)
        if "validation" in raw:
            raw["validation"] = _salvage_items(
                raw["validation"], ValidationRule.model_validate, _HARMLESS_RULE
            )
        stage, invalid = _salvage_model(
            StageSpec,
            raw,
            {
                "key": placeholder_key,
                "name": placeholder_key,
                "probability": 0,
                # Stand-ins that exist, so that triggers on them are not reported as never firing.
                "sla": {"target": "PT1H"},
                "rotting": "PT1H",
            },
        )
        if isinstance(stage, StageSpec):
            return stage, "outcome" in invalid
    stand_in = StageSpec(key=placeholder_key, name=placeholder_key, probability=0)
    return stand_in, True


def _salvage_automation(i: int, raw: Any) -> AutomationSpec:
    if isinstance(raw, dict):
        raw = dict(raw)
        if "actions" in raw:
            raw["actions"] = _salvage_items(
                raw["actions"], _ACTION.validate_python, _HARMLESS_ACTION
            )
        if "conditions" in raw:
            raw["conditions"] = _salvage_items(
                raw["conditions"], ValidationRule.model_validate, _HARMLESS_RULE
            )
        automation, _ = _salvage_model(
            AutomationSpec,
            raw,
            {
                "name": f"automation {i}",
                "trigger": _HARMLESS_TRIGGER,
                "actions": [_HARMLESS_ACTION],
            },
        )
        if isinstance(automation, AutomationSpec):
            return automation
    return AutomationSpec(
        name=f"automation {i}", trigger=_HARMLESS_TRIGGER, actions=[_HARMLESS_ACTION]
    )


def _salvage_pipeline(payload: dict[str, Any]) -> tuple[PipelineSpec | None, bool]:
    raw = dict(payload)
    skip_outcomes = False
    if "stages" in raw:
        if not isinstance(raw["stages"], list):
            return None, True  # nothing about stages can be checked without them
        stages = []
        for i, item in enumerate(raw["stages"]):
            stage, unknown_outcome = _salvage_stage(i, item)
            stages.append(stage)
            skip_outcomes = skip_outcomes or unknown_outcome
        raw["stages"] = stages
    if isinstance(raw.get("automations"), list):
        raw["automations"] = [_salvage_automation(i, a) for i, a in enumerate(raw["automations"])]
    # Stand-ins for what is missing or wrong at the top (reported already), so that the rest is
    # still checked: a body without "currency" or "type" still hears that it has no stages.
    stand_ins = {
        "name": "pipeline",
        "type": "custom",
        "currency": "USD",
        "probability_mode": "stage",
        "automations": [],
    }
    spec, _ = _salvage_model(PipelineSpec, raw, stand_ins)
    return (spec if isinstance(spec, PipelineSpec) else None), skip_outcomes


def parse_and_validate(
    payload: Any, *, known_templates: set[str] | None = None
) -> tuple[PipelineSpec | None, list[Problem]]:
    """Parse a submitted pipeline and list every problem with it.

    Returns ``(spec, [])`` when it can be saved, ``(spec, problems)`` when it is well-formed but
    inconsistent, and ``(None, problems)`` when its shape is wrong; in that last case the
    whole-pipeline checks still run on the parts that could be read, so the list is complete.
    """
    try:
        spec = PipelineSpec.model_validate(payload, context=INPUT_CONTEXT)
    except pydantic.ValidationError as exc:
        problems = problems_from_validation_error(exc)
        if isinstance(payload, dict):
            salvaged, skip_outcomes = _salvage_pipeline(payload)
            if salvaged is not None:
                checker = _Checker(salvaged, known_templates, skip_outcomes=skip_outcomes)
                problems.extend(checker.run())
        return None, problems
    return spec, validate_pipeline(spec, known_templates=known_templates)
