import copy
import itertools
from typing import Any

import pydantic
import pytest

from domain.deal import Problem
from domain.pipeline import PipelineSpec
from domain.validation import parse_and_validate, problems_from_validation_error, validate_pipeline


def stage(key: str, name: str | None = None, probability: float = 10, **extra: Any) -> dict:
    return {"key": key, "name": name or key.title(), "probability": probability, **extra}


def entered(stage_key: str | None, target: str, name: str | None = None) -> dict:
    trigger = (
        {"on": "stage_entered"}
        if stage_key is None
        else {"on": "stage_entered", "stage": stage_key}
    )
    return {
        "name": name or f"enter {stage_key} -> {target}",
        "trigger": trigger,
        "actions": [{"do": "move_to_stage", "stage": target}],
    }


def exited(stage_key: str | None, target: str, name: str | None = None) -> dict:
    trigger = (
        {"on": "stage_exited"} if stage_key is None else {"on": "stage_exited", "stage": stage_key}
    )
    return {
        "name": name or f"exit {stage_key} -> {target}",
        "trigger": trigger,
        "actions": [{"do": "move_to_stage", "stage": target}],
    }


BASE: dict = {
    "name": "Sales",
    "type": "sales",
    "currency": "EUR",
    "probability_mode": "stage",
    "stages": [
        stage("lead", probability=10),
        stage("qualified", probability=30),
        stage("proposal", probability=60),
        stage("won", probability=100, outcome="won"),
        stage("lost", probability=0, outcome="lost"),
    ],
}


def payload(**changes: Any) -> dict:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def check(data: dict, **kwargs: Any) -> list[Problem]:
    return validate_pipeline(PipelineSpec.model_validate(data), **kwargs)


def codes(problems: list[Problem]) -> list[str]:
    return [p.code for p in problems]


def only(problems: list[Problem], code: str) -> list[Problem]:
    return [p for p in problems if p.code == code]


def test_a_good_pipeline_has_no_problems():
    data = payload(
        stages=[
            stage("lead", sla={"target": "PT4H"}, rotting="P14D"),
            stage(
                "qualified",
                required_fields=["budget"],
                validation=[{"expr": "value > `0`", "message": "needs a value"}],
                approval={"approvers": ["boss"], "timeout": "P1D", "escalate_to": ["ceo"]},
            ),
            stage("won", outcome="won"),
            stage("lost", outcome="lost"),
        ],
        automations=[
            entered("lead", "qualified"),
            {
                "name": "stale",
                "trigger": {"on": "time_in_stage", "stage": "qualified", "after": "P7D"},
                "conditions": [{"expr": "fields.budget > `100`"}],
                "actions": [
                    {"do": "move_to_stage", "stage": "lost"},
                    {"do": "notify", "to": "owner", "template": "stale"},
                ],
            },
            {
                "name": "sla",
                "trigger": {"on": "sla_breached", "stage": "lead"},
                "actions": [{"do": "create_task", "template": "call"}],
            },
            {
                "name": "rot",
                "trigger": {"on": "rotting"},
                "actions": [{"do": "create_task", "template": "call"}],
            },
            {
                "name": "field",
                "trigger": {"on": "field_changed", "field": "budget"},
                "actions": [{"do": "set_field", "field": "x", "value": 1}],
            },
        ],
        calendar={"timezone": "Europe/Berlin"},
    )
    assert check(data, known_templates={"stale", "call"}) == []


def test_contract_example_lists_every_problem_at_once():
    data = payload(
        stages=[
            stage("lead", "Lead"),
            stage("qualified", "Qualified"),
            stage("proposal", "qualified "),  # same name as stages[1], ignoring case/spaces
            stage("won", outcome="won"),
            stage("lost", outcome="lost"),
        ],
        automations=[
            entered("qualified", "proposal", "to proposal"),
            entered("proposal", "qualified", "back to qualified"),
            entered("lead", "negotiation", "to negotiation"),
        ],
    )
    spec, problems = parse_and_validate(data)
    assert spec is not None
    assert codes(problems) == ["duplicate_stage_name", "unknown_stage", "automation_cycle"]
    by_code = {p.code: p for p in problems}
    assert by_code["duplicate_stage_name"].loc == ["stages", 2, "name"]
    assert "stages[1]" in by_code["duplicate_stage_name"].msg
    assert by_code["unknown_stage"].loc == ["automations", 2, "actions", 0, "stage"]
    assert "'negotiation'" in by_code["unknown_stage"].msg
    assert by_code["automation_cycle"].loc == ["automations", 0]
    assert "qualified → proposal → qualified" in by_code["automation_cycle"].msg


def test_no_stages():
    problems = check(payload(stages=[]))
    assert [(p.code, p.loc) for p in problems] == [("no_stages", ["stages"])]


def test_duplicate_keys_ignore_case_and_report_the_second_occurrence():
    spec = PipelineSpec.model_validate(
        payload(stages=[stage("lead", "A"), stage("b", "B"), stage("Lead", "C")])
    )
    problems = validate_pipeline(spec)
    dup = only(problems, "duplicate_stage_key")
    assert len(dup) == 1
    assert dup[0].loc == ["stages", 2, "key"]
    assert "stages[0]" in dup[0].msg


def test_duplicate_keys_with_surrounding_spaces():
    problems = check(payload(stages=[stage("lead", "A"), stage("  lead ", "B")]))
    assert [p.loc for p in only(problems, "duplicate_stage_key")] == [["stages", 1, "key"]]


def test_every_duplicate_is_reported():
    problems = check(
        payload(
            stages=[
                stage("a", "Same"),
                stage("a", "same"),
                stage("a", " SAME "),
                stage("b", "Other"),
            ]
        )
    )
    assert [p.loc for p in only(problems, "duplicate_stage_key")] == [
        ["stages", 1, "key"],
        ["stages", 2, "key"],
    ]
    assert [p.loc for p in only(problems, "duplicate_stage_name")] == [
        ["stages", 1, "name"],
        ["stages", 2, "name"],
    ]
    assert all("stages[0]" in p.msg for p in problems)


def test_unknown_stage_in_trigger_and_action_with_a_suggestion():
    problems = check(
        payload(
            automations=[
                {
                    "name": "x",
                    "trigger": {"on": "stage_entered", "stage": "qualifed"},
                    "actions": [
                        {"do": "set_field", "field": "a", "value": 1},
                        {"do": "move_to_stage", "stage": "nowhere"},
                    ],
                }
            ]
        )
    )
    unknown = only(problems, "unknown_stage")
    assert [p.loc for p in unknown] == [
        ["automations", 0, "trigger", "stage"],
        ["automations", 0, "actions", 1, "stage"],
    ]
    assert "did you mean 'qualified'?" in unknown[0].msg
    assert "'lead'" in unknown[1].msg  # lists the stages when nothing is close


def test_unknown_stage_in_any_kind_of_trigger():
    problems = check(
        payload(
            automations=[
                {
                    "name": "x",
                    "trigger": {"on": "field_changed", "field": "f", "stage": "ghost"},
                    "actions": [{"do": "set_field", "field": "a"}],
                }
            ]
        )
    )
    assert [(p.code, p.loc) for p in problems] == [
        ("unknown_stage", ["automations", 0, "trigger", "stage"])
    ]


def test_time_in_stage_needs_after():
    problems = check(
        payload(
            automations=[
                {
                    "name": "x",
                    "trigger": {"on": "time_in_stage", "stage": "lead"},
                    "actions": [{"do": "set_field", "field": "a"}],
                }
            ]
        )
    )
    assert [(p.code, p.loc) for p in problems] == [
        ("invalid_trigger", ["automations", 0, "trigger", "after"])
    ]


@pytest.mark.parametrize("field", [None, "", "  "])
def test_field_changed_needs_field(field):
    trigger: dict = {"on": "field_changed"}
    if field is not None:
        trigger["field"] = field
    problems = check(
        payload(
            automations=[
                {"name": "x", "trigger": trigger, "actions": [{"do": "set_field", "field": "a"}]}
            ]
        )
    )
    assert [(p.code, p.loc) for p in problems] == [
        ("invalid_trigger", ["automations", 0, "trigger", "field"])
    ]


@pytest.mark.parametrize("on", ["sla_warning", "sla_breached"])
def test_sla_trigger_on_a_stage_without_sla(on):
    data = payload()
    data["stages"][0]["sla"] = {"target": "PT4H"}
    data["automations"] = [
        {
            "name": "ok",
            "trigger": {"on": on, "stage": "lead"},
            "actions": [{"do": "set_field", "field": "a"}],
        },
        {
            "name": "bad",
            "trigger": {"on": on, "stage": "qualified"},
            "actions": [{"do": "set_field", "field": "a"}],
        },
        {"name": "any", "trigger": {"on": on}, "actions": [{"do": "set_field", "field": "a"}]},
    ]
    problems = check(data)
    assert [(p.code, p.loc) for p in problems] == [
        ("invalid_trigger", ["automations", 1, "trigger", "stage"])
    ]
    assert "'qualified' has no sla" in problems[0].msg


def test_sla_trigger_without_stage_when_no_stage_has_an_sla():
    problems = check(
        payload(
            automations=[
                {
                    "name": "x",
                    "trigger": {"on": "sla_warning"},
                    "actions": [{"do": "set_field", "field": "a"}],
                }
            ]
        )
    )
    assert [(p.code, p.loc) for p in problems] == [
        ("invalid_trigger", ["automations", 0, "trigger", "on"])
    ]


def test_rotting_trigger_on_a_stage_without_rotting():
    data = payload()
    data["stages"][1]["rotting"] = "P14D"
    data["automations"] = [
        {
            "name": "ok",
            "trigger": {"on": "rotting", "stage": "qualified"},
            "actions": [{"do": "set_field", "field": "a"}],
        },
        {
            "name": "bad",
            "trigger": {"on": "rotting", "stage": "lead"},
            "actions": [{"do": "set_field", "field": "a"}],
        },
    ]
    problems = check(data)
    assert [(p.code, p.loc) for p in problems] == [
        ("invalid_trigger", ["automations", 1, "trigger", "stage"])
    ]
    assert "no rotting" in problems[0].msg


def test_trigger_on_unknown_stage_is_reported_once():
    problems = check(
        payload(
            automations=[
                {
                    "name": "x",
                    "trigger": {"on": "sla_breached", "stage": "ghost"},
                    "actions": [{"do": "set_field", "field": "a"}],
                }
            ]
        )
    )
    assert codes(problems) == ["unknown_stage"]


def test_invalid_expressions_in_validation_and_conditions():
    data = payload()
    data["stages"][1]["validation"] = [{"expr": "value > `0`"}, {"expr": "value >"}]
    data["automations"] = [
        {
            "name": "x",
            "trigger": {"on": "stage_entered", "stage": "lead"},
            "conditions": [{"expr": "lenght(fields.items)"}],
            "actions": [{"do": "set_field", "field": "a"}],
        }
    ]
    problems = check(data)
    assert [(p.code, p.loc) for p in problems] == [
        ("invalid_expression", ["stages", 1, "validation", 1, "expr"]),
        ("invalid_expression", ["automations", 0, "conditions", 0, "expr"]),
    ]
    assert "unknown function lenght()" in problems[1].msg


def test_pipeline_without_outcome_stages_is_allowed():
    assert check(payload(stages=[stage("open"), stage("pending"), stage("closed")])) == []


@pytest.mark.parametrize(("present", "missing"), [("won", "lost"), ("lost", "won")])
def test_outcome_stages_come_in_pairs(present, missing):
    problems = check(payload(stages=[stage("a"), stage("b", outcome=present)]))
    assert [(p.code, p.loc) for p in problems] == [("missing_outcome", ["stages"])]
    assert f"'{missing}'" in problems[0].msg


def test_outcome_stages_must_come_last():
    problems = check(
        payload(
            stages=[
                stage("lead"),
                stage("won", outcome="won"),
                stage("qualified"),
                stage("lost", outcome="lost"),
                stage("later"),
            ]
        )
    )
    misplaced = only(problems, "misplaced_outcome_stage")
    assert [p.loc for p in misplaced] == [["stages", 1, "outcome"], ["stages", 3, "outcome"]]
    assert "'later'" in misplaced[0].msg


def test_a_pipeline_of_only_outcome_stages_has_no_open_stage():
    problems = check(payload(stages=[stage("won", outcome="won"), stage("lost", outcome="lost")]))
    assert codes(problems) == ["no_open_stage"]


def test_unknown_templates_only_when_templates_are_known():
    data = payload(
        automations=[
            {
                "name": "x",
                "trigger": {"on": "stage_entered", "stage": "lead"},
                "actions": [
                    {"do": "notify", "to": "owner", "template": "welcome"},
                    {"do": "create_task", "template": "call-them"},
                    {"do": "notify", "to": ["a", "b"], "template": "typo"},
                ],
            }
        ]
    )
    assert check(data) == []
    problems = check(data, known_templates={"welcome", "call-them"})
    assert [(p.code, p.loc) for p in problems] == [
        ("unknown_template", ["automations", 0, "actions", 2, "template"])
    ]
    assert "'typo'" in problems[0].msg
    problems = check(data, known_templates=set())
    assert len(only(problems, "unknown_template")) == 3


def test_assign_owner_by_field_needs_a_field():
    data = payload(
        automations=[
            {
                "name": "x",
                "trigger": {"on": "stage_entered", "stage": "lead"},
                "actions": [
                    {"do": "assign_owner", "strategy": "by_field"},
                    {"do": "assign_owner", "strategy": "by_field", "field": "region_owner"},
                    {"do": "assign_owner", "strategy": "round_robin", "among": ["a", "b"]},
                ],
            }
        ]
    )
    problems = check(data)
    assert [(p.code, p.loc) for p in problems] == [
        ("invalid_action", ["automations", 0, "actions", 0, "field"])
    ]


def approval_problems(approval: dict) -> list[tuple[str, list]]:
    data = payload()
    data["stages"][2]["approval"] = approval
    return [(p.code, p.loc) for p in check(data)]


def test_approval_minimal_is_fine():
    assert approval_problems({"approvers": ["boss"]}) == []
    assert (
        approval_problems({"approvers": ["boss"], "timeout": "P1D", "on_timeout": "reject"}) == []
    )
    assert (
        approval_problems({"approvers": ["boss"], "timeout": "P1D", "escalate_to": ["ceo"]}) == []
    )


def test_escalation_needs_someone_to_escalate_to():
    assert approval_problems(
        {"approvers": ["boss"], "timeout": "P1D", "on_timeout": "escalate"}
    ) == [("invalid_approval", ["stages", 2, "approval", "escalate_to"])]


def test_escalation_needs_a_timeout():
    assert approval_problems(
        {"approvers": ["boss"], "on_timeout": "escalate", "escalate_to": ["ceo"]}
    ) == [("invalid_approval", ["stages", 2, "approval", "timeout"])]


def test_escalate_to_is_pointless_unless_escalating():
    assert approval_problems({"approvers": ["boss"], "escalate_to": ["ceo"]}) == [
        ("invalid_approval", ["stages", 2, "approval", "timeout"])
    ]
    assert approval_problems(
        {"approvers": ["boss"], "timeout": "P1D", "on_timeout": "approve", "escalate_to": ["ceo"]}
    ) == [("invalid_approval", ["stages", 2, "approval", "escalate_to"])]


def test_stored_specs_revalidate_cleanly():
    """A spec dumped to JSON (all defaults written out) must not grow new problems."""
    data = payload()
    data["stages"][2]["approval"] = {"approvers": ["boss"]}
    spec = PipelineSpec.model_validate(data)
    again = PipelineSpec.model_validate(spec.model_dump(mode="json"))
    assert validate_pipeline(again) == []


def test_invalid_calendar_is_reported_under_calendar():
    problems = check(
        payload(calendar={"timezone": "Nowhere/Land", "start": "17:00", "end": "09:00"})
    )
    assert [(p.code, p.loc) for p in problems] == [
        ("invalid_calendar", ["calendar", "timezone"]),
        ("invalid_calendar", ["calendar", "end"]),
    ]


# -- cycles --------------------------------------------------------------------------------------


def cycles(automations: list[dict], stages: list[dict] | None = None) -> list[Problem]:
    data = payload(automations=automations)
    if stages is not None:
        data["stages"] = stages
    return only(check(data), "automation_cycle")


def test_two_stage_cycle():
    found = cycles([entered("qualified", "proposal"), entered("proposal", "qualified")])
    assert len(found) == 1
    assert "qualified → proposal → qualified" in found[0].msg
    assert found[0].loc == ["automations", 0]


def test_cycle_is_named_from_the_earliest_stage_and_points_at_one_of_its_automations():
    found = cycles(
        [
            {
                "name": "noise",
                "trigger": {"on": "field_changed", "field": "x"},
                "actions": [{"do": "set_field", "field": "y"}],
            },
            entered("proposal", "lead", "p->l"),
            entered("qualified", "proposal", "q->p"),
            entered("lead", "qualified", "l->q"),
        ]
    )
    assert len(found) == 1
    assert "lead → qualified → proposal → lead" in found[0].msg
    assert found[0].loc == ["automations", 1]
    assert "'p->l'" in found[0].msg and "'q->p'" in found[0].msg and "'l->q'" in found[0].msg
    assert "'noise'" not in found[0].msg


def test_self_loop():
    found = cycles([entered("lead", "lead")])
    assert len(found) == 1
    assert "lead → lead" in found[0].msg


def test_chain_without_cycle():
    assert cycles([entered("lead", "qualified"), entered("qualified", "proposal")]) == []


def test_each_cycle_is_reported_once_and_distinct_cycles_separately():
    found = cycles(
        [
            entered("lead", "qualified"),
            entered("qualified", "lead"),
            entered("qualified", "proposal"),
            entered("proposal", "qualified"),
        ]
    )
    messages = sorted(p.msg.split(":")[0] for p in found)
    assert messages == [
        "automation cycle lead → qualified → lead",
        "automation cycle qualified → proposal → qualified",
    ]


def test_duplicate_automations_make_one_cycle():
    found = cycles(
        [
            entered("lead", "qualified", "a"),
            entered("qualified", "lead", "b"),
            entered("qualified", "lead", "c"),
        ]
    )
    assert len(found) == 1
    assert "'a', 'b', 'c'" in found[0].msg


@pytest.mark.parametrize(
    "on", ["time_in_stage", "sla_warning", "sla_breached", "rotting", "field_changed"]
)
def test_waiting_triggers_never_make_a_cycle(on):
    stages = [
        stage("lead", sla={"target": "PT1H"}, rotting="P1D"),
        stage("qualified", sla={"target": "PT1H"}, rotting="P1D"),
    ]
    trigger: dict = {"on": on, "stage": "qualified", "after": "P1D", "field": "f"}
    if on != "time_in_stage":
        trigger.pop("after")
    if on != "field_changed":
        trigger.pop("field")
    timed = {
        "name": "timed",
        "trigger": trigger,
        "actions": [{"do": "move_to_stage", "stage": "lead"}],
    }
    assert cycles([entered("lead", "qualified"), timed], stages) == []


def test_entering_any_stage_and_moving_is_a_loop():
    found = cycles([entered(None, "proposal")])
    assert len(found) == 1
    assert "proposal → proposal" in found[0].msg


def test_exit_automations_alone_do_not_loop():
    # leaving lead (for X) moves X to qualified; leaving qualified moves to lead: both settle.
    assert cycles([exited("lead", "qualified"), exited("qualified", "lead")]) == []


def test_exit_automation_closing_an_entered_chain_loops():
    # entering lead moves to qualified, which leaves lead, which moves back to lead ...
    found = cycles([entered("lead", "qualified", "a"), exited("lead", "lead", "b")])
    assert len(found) == 1
    assert "lead → qualified → lead" in found[0].msg


def test_exit_of_any_stage_moving_somewhere_settles():
    # leaving X for Y moves Y to lost, which leaves Y; moving lost to lost changes nothing
    assert cycles([exited(None, "lost")]) == []


def test_exit_automations_looping_through_an_entered_one():
    # entering qualified moves to proposal; leaving qualified moves to lead; entering lead moves
    # to qualified: lead -> qualified -> proposal, and leaving qualified -> lead again ...
    found = cycles(
        [
            entered("qualified", "proposal", "a"),
            exited("qualified", "lead", "b"),
            entered("lead", "qualified", "c"),
        ]
    )
    assert len(found) == 1
    assert "lead → qualified → proposal → lead" in found[0].msg
    assert "'a', 'b', 'c'" in found[0].msg


def test_self_loop_and_other_cycles_are_ordered_by_automation():
    found = cycles(
        [
            entered("qualified", "proposal"),
            entered("lead", "lead"),
            entered("proposal", "qualified"),
        ]
    )
    assert [p.loc for p in found] == [["automations", 0], ["automations", 1]]
    assert "qualified → proposal → qualified" in found[0].msg
    assert "lead → lead" in found[1].msg


def test_moves_to_unknown_stages_do_not_confuse_cycle_detection():
    problems = check(payload(automations=[entered("lead", "ghost"), entered("ghost", "lead")]))
    assert codes(problems) == ["unknown_stage", "unknown_stage"]


def test_many_stages_with_a_long_cycle_is_fast_and_found():
    keys = [f"s{i}" for i in range(60)]
    stages = [stage(k) for k in keys]
    automations = [entered(a, b) for a, b in itertools.pairwise(keys)]
    automations.append(entered(keys[-1], keys[0]))
    found = cycles(automations, stages)
    assert len(found) == 1
    assert found[0].msg.startswith("automation cycle s0 → s1 → s2")
    assert "s59 → s0:" in found[0].msg


def test_cycle_enumeration_is_bounded():
    keys = [f"s{i}" for i in range(12)]
    stages = [stage(k) for k in keys]
    automations = [entered(a, b) for a in keys for b in keys if a != b]  # complete graph
    found = cycles(automations, stages)
    assert 1 <= len(found) <= 25


# -- shape errors and parse_and_validate ---------------------------------------------------------


def test_problems_from_validation_error_cleans_locations():
    data = payload(rules={"skip": "maybe"})
    data["stages"][0]["probability"] = 150
    data["stages"][1]["sla"] = {"target": "PT4X"}
    data["stages"][2]["surprise"] = True
    data["automations"] = [
        {
            "name": "x",
            "trigger": {"on": "stage_entered"},
            "actions": [
                {"do": "move_to_stage"},
                {"do": "teleport"},
                {"do": "notify", "to": 5, "template": "t"},
            ],
        }
    ]
    with pytest.raises(pydantic.ValidationError) as caught:
        PipelineSpec.model_validate(data)
    problems = problems_from_validation_error(caught.value)
    assert all(p.code == "invalid" for p in problems)
    by_loc = {tuple(p.loc): p.msg for p in problems}
    assert by_loc == {
        ("stages", 0, "probability"): "Input should be less than or equal to 100",
        ("stages", 1, "sla", "target"): by_loc[("stages", 1, "sla", "target")],
        ("stages", 2, "surprise"): "unknown field",
        ("rules", "skip"): "Input should be 'allow' or 'deny' or a valid list",
        ("automations", 0, "actions", 0, "stage"): "field required",
        ("automations", 0, "actions", 1): by_loc[("automations", 0, "actions", 1)],
        ("automations", 0, "actions", 2, "to"): "Input should be a valid string or a valid list",
    }
    assert by_loc[("stages", 1, "sla", "target")].startswith("'PT4X' is not an ISO 8601 duration")
    assert "'teleport'" in by_loc[("automations", 0, "actions", 1)]


def test_parse_and_validate_accepts_a_good_pipeline():
    spec, problems = parse_and_validate(payload())
    assert problems == []
    assert isinstance(spec, PipelineSpec)
    assert spec.stages[0].key == "lead"


def test_parse_and_validate_returns_shape_and_pipeline_problems_together():
    data = payload(
        stages=[
            stage("lead", "Lead"),
            stage("qualified", "Qualified", probability=150),
            stage("proposal", "qualified"),
            stage("won", outcome="won"),
            stage("lost", outcome="lost"),
        ],
        automations=[
            entered("qualified", "proposal"),
            entered("proposal", "qualified"),
            entered("lead", "negotiation"),
        ],
    )
    spec, problems = parse_and_validate(data)
    assert spec is None
    assert [(p.code, p.loc) for p in problems] == [
        ("invalid", ["stages", 1, "probability"]),
        ("duplicate_stage_name", ["stages", 2, "name"]),
        ("unknown_stage", ["automations", 2, "actions", 0, "stage"]),
        ("automation_cycle", ["automations", 0]),
    ]


def test_salvage_keeps_indexes_and_does_not_invent_problems():
    data = payload()
    data["stages"][1]["sla"] = {"target": "nonsense"}
    data["stages"][2]["key"] = ""  # invalid key: references to it cannot be checked
    data["stages"][3]["outcome"] = "victory"  # invalid outcome: outcome checks are skipped
    data["automations"] = [
        {
            "name": "sla",
            "trigger": {"on": "sla_breached", "stage": "qualified"},
            "actions": [{"do": "set_field", "field": "a"}],
        },
        {
            "name": "",  # invalid name
            "trigger": {"on": "stage_entered", "stage": "lead"},
            "conditions": [{"expr": ""}, {"expr": "value >"}],
            "actions": [{"do": "nope"}, {"do": "move_to_stage", "stage": "ghost"}],
        },
        {
            "name": "bad trigger",
            "trigger": {"on": "whenever"},
            "actions": [{"do": "move_to_stage", "stage": "ghost2"}],
        },
    ]
    spec, problems = parse_and_validate(data)
    assert spec is None
    shape = {tuple(p.loc) for p in problems if p.code == "invalid"}
    assert shape == {
        ("stages", 1, "sla", "target"),
        ("stages", 2, "key"),
        ("stages", 3, "outcome"),
        ("automations", 1, "name"),
        ("automations", 1, "conditions", 0, "expr"),
        ("automations", 1, "actions", 0),
        ("automations", 2, "trigger", "on"),
    }
    rest = [(p.code, p.loc) for p in problems if p.code != "invalid"]
    assert rest == [
        ("invalid_expression", ["automations", 1, "conditions", 1, "expr"]),
        ("unknown_stage", ["automations", 1, "actions", 1, "stage"]),
        ("unknown_stage", ["automations", 2, "actions", 0, "stage"]),
    ]


def test_parse_and_validate_of_garbage():
    spec, problems = parse_and_validate(["not", "an", "object"])
    assert spec is None
    assert [(p.code, p.loc) for p in problems] == [("invalid", [])]

    spec, problems = parse_and_validate(
        {
            "name": "x",
            "type": "sales",
            "currency": "USD",
            "probability_mode": "stage",
            "stages": "lead,won",
        }
    )
    assert spec is None
    assert [(p.code, p.loc) for p in problems] == [("invalid", ["stages"])]


def test_parse_and_validate_missing_name_still_checks_the_rest():
    data = payload(automations=[entered("lead", "lead")])
    del data["name"]
    spec, problems = parse_and_validate(data)
    assert spec is None
    assert [(p.code, p.loc) for p in problems] == [
        ("invalid", ["name"]),
        ("automation_cycle", ["automations", 0]),
    ]
    assert problems[0].msg == "field required"


def test_parse_and_validate_checks_templates():
    data = payload(
        automations=[
            {
                "name": "x",
                "trigger": {"on": "stage_entered", "stage": "lead"},
                "actions": [{"do": "create_task", "template": "nope"}],
            }
        ]
    )
    _, problems = parse_and_validate(data, known_templates={"call"})
    assert codes(problems) == ["unknown_template"]


def test_validation_is_deterministic():
    data = payload(
        automations=[
            entered("qualified", "proposal"),
            entered("proposal", "qualified"),
            entered("lead", "qualified"),
            entered("qualified", "lead"),
            exited("lead", "lead"),
        ]
    )
    first = parse_and_validate(data)[1]
    for _ in range(5):
        assert parse_and_validate(copy.deepcopy(data))[1] == first


def test_template_placeholders_must_be_deal_fields() -> None:
    from datetime import UTC, datetime

    from domain.engine import Engine
    from domain.pipeline import PipelineSnapshot
    from domain.validation import TEMPLATE_FIELDS, parse_and_validate

    payload = {
        "name": "p",
        "type": "sales",
        "currency": "USD",
        "probability_mode": "stage",
        "stages": [{"key": "lead", "name": "Lead", "probability": 10}],
        "automations": [
            {
                "name": "hello",
                "trigger": {"on": "stage_entered", "stage": "lead"},
                "actions": [
                    {"do": "notify", "to": "ana", "template": "Deal {titel} in {stage}"},
                    {"do": "create_task", "template": "Call {owner} about {title}"},
                ],
            }
        ],
    }
    _, problems = parse_and_validate(payload)
    assert [(p.code, p.loc) for p in problems] == [
        ("unknown_template_field", ["automations", 0, "actions", 0, "template"])
    ]
    assert "did you mean {title}?" in problems[0].msg
    # The names allowed are exactly what the engine hands every effect.
    ok, none = parse_and_validate({**payload, "automations": []})
    assert ok is not None and none == []
    engine, _ = Engine.create(
        PipelineSnapshot(pipeline_id="p", version=1, spec=ok),
        deal_id="d",
        title="t",
        value=1,
        currency="EUR",
        owner=None,
        fields={},
        stage=None,
        now=datetime(2025, 1, 1, tzinfo=UTC),
    )
    assert set(engine._context()) == TEMPLATE_FIELDS


# -- control characters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("name",), "Sa\x00les"),
        (("description",), "a\x00b"),
        (("stages", 0, "key"), "le\x00ad"),
        (("stages", 0, "key"), "le\tad"),  # keys hold no control character at all
        (("stages", 0, "name"), "Le\x1fad"),
        (("stages", 0, "required_fields", 0), "bud\x00get"),
        (("stages", 0, "validation", 0, "message"), "no\x00"),
        (("stages", 0, "approval", "approvers", 0), "ana\x00"),
        (("automations", 0, "name"), "hel\x00lo"),
        (("automations", 0, "trigger", "field"), "bud\x00get"),
        (("automations", 0, "actions", 0, "template"), "Hi\x00"),
        (("automations", 0, "actions", 1, "field"), "f\x00"),
        (("automations", 0, "actions", 1, "value"), {"k": "v\x00"}),
        (("automations", 0, "actions", 2, "integration"), "crm\x00"),
    ],
)
def test_a_control_character_is_named_where_it_is(path: tuple, value: Any) -> None:
    data = payload(
        description="ok",
        automations=[
            {
                "name": "hello",
                "trigger": {"on": "field_changed", "field": "budget"},
                "actions": [
                    {"do": "notify", "to": "ana", "template": "Hi {title}"},
                    {"do": "set_field", "field": "f", "value": 1},
                    {"do": "call_integration", "integration": "crm"},
                ],
            }
        ],
    )
    data["stages"][0].update(
        required_fields=["budget"],
        validation=[{"expr": "value > `0`", "message": "a value"}],
        approval={"approvers": ["ana"]},
    )
    spec, problems = parse_and_validate(copy.deepcopy(data))
    assert spec is not None and problems == []
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    spec, problems = parse_and_validate(data)
    assert spec is None
    assert [p.loc for p in problems] == [list(path)], problems
    assert "NUL" in problems[0].msg or "control character" in problems[0].msg


def test_names_and_descriptions_keep_tabs_and_newlines() -> None:
    spec, problems = parse_and_validate(payload(name="Sales\tEU", description="one\r\ntwo"))
    assert problems == [] and spec is not None and spec.description == "one\r\ntwo"


def test_a_stage_with_a_nul_key_is_still_salvaged_for_the_other_checks() -> None:
    data = payload()
    data["stages"][1]["key"] = "quali\x00fied"
    data["stages"][2]["name"] = "Lead"
    _, problems = parse_and_validate(data)
    assert [(p.code, p.loc) for p in problems] == [
        ("invalid", ["stages", 1, "key"]),
        ("duplicate_stage_name", ["stages", 2, "name"]),
    ]


def test_a_stored_version_with_a_control_character_stays_readable() -> None:
    """Only a submission is checked: a version saved before the check (or a deal workflow's
    snapshot of it) is read back as it was."""
    data = payload(name="Old\x1bname")
    data["stages"][0]["key"] = "le\tad"
    data["stages"][1]["name"] = "Quali\x00fied"
    spec = PipelineSpec.model_validate(data)
    assert spec.stages[0].key == "le\tad"
    assert PipelineSpec.model_validate(spec.model_dump(mode="json")) == spec
    assert parse_and_validate(data)[0] is None


def test_a_body_without_its_required_members_still_hears_about_the_rest() -> None:
    _, problems = parse_and_validate({"name": "no stages"})
    assert [(p.code, p.loc) for p in problems] == [
        ("invalid", ["type"]),
        ("invalid", ["currency"]),
        ("invalid", ["probability_mode"]),
        ("no_stages", ["stages"]),
    ]
    assert problems[1].msg == "field required"
    _, problems = parse_and_validate({**payload(), "currency": "eur", "type": None})
    assert {tuple(p.loc) for p in problems} == {("currency",), ("type",)}
