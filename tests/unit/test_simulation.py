"""The simulator: scripted deal paths through the real engine with a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain.pipeline import PipelineSnapshot, PipelineSpec
from domain.simulation import MAX_ADVANCES, Script, SimulationError, simulate
from domain.templates import TEMPLATES, apply_template
from domain.validation import parse_and_validate

T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)  # a Monday


def iso(moment: datetime) -> str:
    return moment.isoformat()


def make_snapshot(**changes: Any) -> PipelineSnapshot:
    data: dict[str, Any] = {
        "name": "Sales",
        "type": "sales",
        "currency": "USD",
        "probability_mode": "stage",
        "stages": [
            {
                "key": "lead",
                "name": "Lead",
                "probability": 10,
                "sla": {"target": "PT10H", "warn_at": 0.5},
            },
            {"key": "qualified", "name": "Qualified", "probability": 30, "rotting": "P14D"},
            {
                "key": "proposal",
                "name": "Proposal",
                "probability": 60,
                "required_fields": ["budget", "contact"],
                "validation": [{"expr": "value > `0`", "message": "a proposal needs a value"}],
            },
            {
                "key": "negotiation",
                "name": "Negotiation",
                "probability": 80,
                "approval": {"approvers": ["alice", "bob"], "mode": "all"},
            },
            {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
            {"key": "lost", "name": "Lost", "probability": 0, "outcome": "lost"},
        ],
        "rules": {"skip": "deny", "backward": "deny"},
        "automations": [
            {
                "name": "Kick-off task",
                "trigger": {"on": "stage_entered", "stage": "qualified"},
                "actions": [{"do": "create_task", "template": "Call {title}", "due_in": "P1D"}],
            },
            {
                "name": "Chase stale leads",
                "trigger": {"on": "sla_breached", "stage": "lead"},
                "actions": [{"do": "notify", "to": "sales-lead", "template": "sla_breached"}],
            },
        ],
    }
    data.update(changes)
    spec, problems = parse_and_validate(data)
    assert spec is not None and problems == [], problems
    return PipelineSnapshot(pipeline_id="pl_test", version=3, spec=spec)


SNAP = make_snapshot()


def run(steps: list[dict[str, Any]], snapshot: PipelineSnapshot = SNAP, **deal: Any) -> dict:
    script = {
        "deal": {"title": "Acme", "value": 0, **deal},
        "start_at": iso(T0),
        "steps": steps,
    }
    return simulate(snapshot, script)


def kinds(result: dict) -> list[str]:
    return [e["kind"] for e in result["timeline"]]


def entries(result: dict, kind: str) -> list[dict]:
    return [e for e in result["timeline"] if e["kind"] == kind]


def test_a_refused_move_lists_every_rule_that_refused_it():
    result = run([{"do": "move", "to_stage": "proposal"}])
    step = result["steps"][0]
    assert step["outcome"] == "refused"
    assert sorted(p["code"] for p in step["problems"]) == [
        "missing_required_field",
        "missing_required_field",
        "skip_denied",
        "validation_failed",
    ]
    assert {tuple(p["loc"]) for p in step["problems"]} >= {
        ("fields", "budget"),
        ("fields", "contact"),
    }
    assert step["status"] == 422
    assert result["final"]["stage"] == "lead"
    assert "stage_changed" not in kinds(result)


def test_moving_back_is_refused_when_the_rules_deny_it_but_an_admin_may():
    result = run(
        [
            {"do": "move", "to_stage": "qualified"},
            {"do": "move", "to_stage": "lead"},
            {"do": "move", "to_stage": "lead", "actor": {"subject": "root", "role": "admin"}},
        ]
    )
    outcomes = [s["outcome"] for s in result["steps"]]
    assert outcomes == ["moved", "refused", "moved"]
    assert [p["code"] for p in result["steps"][1]["problems"]] == ["backward_denied"]
    assert result["steps"][1]["status"] == 409
    assert result["final"]["stage"] == "lead"


def test_approval_pending_then_approved_by_every_approver_moves_the_deal():
    steps = [
        {"do": "move", "to_stage": "qualified"},
        {"do": "update", "fields": {"budget": 5000, "contact": "ana@acme.test"}, "value": 5000},
        {"do": "move", "to_stage": "proposal"},
        {"do": "move", "to_stage": "negotiation", "after": "PT1H"},
        {"do": "approve", "subject": "alice", "after": "PT2H"},
        {"do": "approve", "subject": "mallory"},
        {"do": "approve", "subject": "bob", "approval": "latest"},
    ]
    result = run(steps)
    outcomes = [s["outcome"] for s in result["steps"]]
    assert outcomes == [
        "moved",
        "ok",
        "moved",
        "pending_approval",
        "pending_approval",
        "refused",
        "moved",
    ]
    approval_id = result["steps"][3]["approval_id"]
    assert approval_id and result["steps"][6]["approval_id"] == approval_id
    assert result["steps"][5]["problems"][0]["code"] == "forbidden"
    assert result["steps"][3]["stage"] == "proposal"  # still waiting
    assert result["final"]["stage"] == "negotiation"
    assert result["final"]["pending_approval"] is None
    requested = entries(result, "approval_requested")
    assert requested[0]["data"]["approvers"] == ["alice", "bob"]
    moved = [e for e in entries(result, "stage_changed") if e["data"]["to"] == "negotiation"]
    assert moved[0]["at"] == iso(T0 + timedelta(hours=3))


def test_a_rejected_approval_leaves_the_deal_where_it_was():
    steps = [
        {"do": "move", "to_stage": "qualified"},
        {"do": "move", "to_stage": "proposal", "fields": {"budget": 1, "contact": "x"}},
        {"do": "reject", "subject": "bob"},
    ]
    result = run(steps, value=10)
    assert result["steps"][1]["outcome"] == "moved"
    assert result["steps"][2]["outcome"] == "refused"  # nothing pending yet
    result = run([*steps[:2], {"do": "move", "to_stage": "negotiation"}, steps[2]], value=10)
    assert [s["outcome"] for s in result["steps"]] == ["moved", "moved", "pending_approval", "ok"]
    assert result["steps"][3]["decision"] == "rejected"
    assert result["final"]["stage"] == "proposal"
    assert result["final"]["pending_approval"] is None


def test_sla_warning_and_breach_happen_at_their_own_instants_during_a_wait():
    result = run([{"do": "wait", "for": "P1D"}])
    warning = entries(result, "sla_warning")
    breach = entries(result, "sla_breached")
    assert [e["at"] for e in warning] == [iso(T0 + timedelta(hours=5))]
    assert [e["at"] for e in breach] == [iso(T0 + timedelta(hours=10))]
    # The automation on sla_breached fired, and its notification is planned, not sent.
    ran = entries(result, "automation_ran")
    assert [e["data"]["automation"] for e in ran] == ["Chase stale leads"]
    planned = entries(result, "action_planned")
    assert {(p["data"]["automation"], p["data"]["executed"]) for p in planned} == {
        (None, False),  # the engine's own breach notice to the owner
        ("Chase stale leads", False),
    }
    assert result["final"]["sla"]["state"] == "breached"
    assert result["final"]["sla"]["due_at"] == iso(T0 + timedelta(hours=10))
    assert result["final"]["at"] == iso(T0 + timedelta(days=1))


def test_a_move_before_the_warning_keeps_the_sla_clean():
    result = run(
        [{"do": "move", "to_stage": "qualified", "after": "PT4H"}, {"do": "wait", "for": "P1D"}]
    )
    assert "sla_warning" not in kinds(result)
    assert result["steps"][0]["sla"] is None  # qualified has no SLA


def test_a_deal_starts_rotting_after_14_days_without_activity_and_activity_clears_it():
    steps = [
        {"do": "move", "to_stage": "qualified"},
        {"do": "wait", "for": "P13D"},
        {"do": "activity", "kind": "call"},
        {"do": "wait", "for": "P13DT23H"},
    ]
    result = run(steps)
    assert "rotting" not in kinds(result)
    assert result["final"]["is_rotting"] is False
    assert result["final"]["rotting_due_at"] == iso(T0 + timedelta(days=27))
    result = run([*steps, {"do": "wait", "for": "PT1H"}])
    assert [e["at"] for e in entries(result, "rotting")] == [iso(T0 + timedelta(days=27))]
    assert result["final"]["is_rotting"] is True
    result = run([*steps, {"do": "wait", "for": "PT2H"}, {"do": "activity", "kind": "email"}])
    assert "rotting_cleared" in kinds(result)
    assert result["final"]["is_rotting"] is False


def test_automations_fire_and_their_effects_are_listed_never_run():
    result = run([{"do": "move", "to_stage": "qualified", "at": iso(T0 + timedelta(hours=1))}])
    ran = entries(result, "automation_ran")
    assert [e["data"]["automation"] for e in ran] == ["Kick-off task"]
    [task] = [e for e in entries(result, "action_planned") if e["data"]["effect"] == "create_task"]
    assert task["data"]["template"] == "Call {title}"
    assert task["data"]["due_at"] == iso(T0 + timedelta(days=1, hours=1))
    assert task["step"] == 0


def test_time_in_stage_automation_moves_the_deal_on():
    snapshot = make_snapshot(
        automations=[
            {
                "name": "Give up",
                "trigger": {"on": "time_in_stage", "stage": "qualified", "after": "P30D"},
                "actions": [{"do": "move_to_stage", "stage": "lost"}],
            }
        ]
    )
    result = run([{"do": "move", "to_stage": "qualified"}, {"do": "wait", "for": "P60D"}], snapshot)
    assert result["final"]["status"] == "lost"
    [closed] = entries(result, "deal_closed")
    assert closed["at"] == iso(T0 + timedelta(days=30))
    assert "rotting" in kinds(result)  # 14 days in qualified came first
    assert kinds(result).index("rotting") < kinds(result).index("deal_closed")


def test_approval_timeout_escalates_and_the_escalation_approver_decides():
    stages = [s.model_dump(mode="json") for s in SNAP.spec.stages]
    stages[1]["approval"] = {
        "approvers": ["alice"],
        "timeout": "PT4H",
        "on_timeout": "escalate",
        "escalate_to": ["carol"],
    }
    snapshot = make_snapshot(stages=stages)
    result = run(
        [
            {"do": "move", "to_stage": "qualified"},
            {"do": "wait", "for": "PT5H"},
            {"do": "approve", "subject": "carol"},
        ],
        snapshot,
    )
    assert [s["outcome"] for s in result["steps"]] == ["pending_approval", "ok", "moved"]
    [escalated] = entries(result, "approval_escalated")
    assert escalated["at"] == iso(T0 + timedelta(hours=4))
    assert result["final"]["stage"] == "qualified"


def test_an_escalation_that_re_arms_forever_is_cut_off():
    stages = [s.model_dump(mode="json") for s in SNAP.spec.stages]
    stages[1]["approval"] = {
        "approvers": ["alice"],
        "timeout": "PT1M",
        "on_timeout": "escalate",
        "escalate_to": ["carol"],
    }
    result = run(
        [{"do": "move", "to_stage": "qualified"}, {"do": "wait", "for": "P100D"}],
        make_snapshot(stages=stages),
    )
    assert result["truncated"] is True
    assert len(entries(result, "approval_escalated")) <= MAX_ADVANCES


def test_business_hours_sla():
    snapshot = make_snapshot(calendar={"timezone": "UTC", "start": "09:00", "end": "17:00"})
    friday = datetime(2025, 1, 10, 16, 0, tzinfo=UTC)
    result = simulate(
        snapshot,
        {
            "deal": {"title": "Late"},
            "start_at": iso(friday),
            "steps": [{"do": "wait", "for": "P5D"}],
        },
    )
    # 10 business hours from Friday 16:00: 1 h on Friday, 8 h on Monday, 1 h on Tuesday.
    [breach] = entries(result, "sla_breached")
    assert breach["at"] == iso(datetime(2025, 1, 14, 10, 0, tzinfo=UTC))


def test_the_simulation_is_deterministic_and_touches_nothing():
    before = SNAP.model_dump(mode="json")
    steps = [{"do": "move", "to_stage": "qualified"}, {"do": "wait", "for": "P20D"}]
    assert run(steps) == run(steps)
    assert SNAP.model_dump(mode="json") == before


def test_script_problems_are_all_listed():
    with pytest.raises(SimulationError) as caught:
        run(
            [
                {"do": "move", "to_stage": "qualified", "at": iso(T0 + timedelta(hours=2))},
                {"do": "update", "at": iso(T0 + timedelta(hours=1))},
                {"do": "activity", "at": iso(T0 + timedelta(hours=3)), "after": "PT1H"},
            ],
            stage="nowhere",
        )
    problems = caught.value.problems
    assert [(p.code, p.loc) for p in problems] == [
        ("unknown_stage", ["deal", "stage"]),
        ("invalid_step_time", ["steps", 1, "at"]),
        ("invalid_step_time", ["steps", 2]),
    ]


def test_script_shape_is_checked_by_pydantic():
    with pytest.raises(ValueError):
        Script.model_validate({"steps": [{"do": "fly"}]})
    with pytest.raises(ValueError):
        Script.model_validate({"start_at": "2025-01-06T09:00:00"})  # no time zone
    script = Script.model_validate({"steps": [{"do": "wait", "for": "PT1H"}]})
    assert script.steps[0].for_ == timedelta(hours=1)


def test_a_script_starting_in_a_later_stage_and_without_start_time_uses_the_default():
    result = simulate(SNAP, {"deal": {"stage": "qualified"}, "steps": []}, start_at=T0)
    assert result["final"]["stage"] == "qualified"
    assert result["start_at"] == iso(T0)
    assert kinds(result)[0] == "deal_created"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_is_a_valid_pipeline_that_a_deal_can_go_through(name: str):
    payload, problems = apply_template(
        {"name": "From template", "template": name, "currency": "USD"}
    )
    assert problems == []
    spec, problems = parse_and_validate(payload)
    assert problems == [] and spec is not None
    assert spec.type == name
    snapshot = PipelineSnapshot(
        pipeline_id="pl_t", version=1, spec=PipelineSpec.model_validate(spec)
    )
    won = next(s.key for s in spec.stages if s.outcome == "won")
    result = simulate(
        snapshot,
        {
            "deal": {
                "title": "T",
                "value": 100,
                "fields": {"contact_email": "a@b.c", "priority": "p1"},
            },
            "steps": [{"do": "move", "to_stage": won, "actor": {"subject": "x", "role": "admin"}}],
        },
    )
    assert result["final"]["status"] == "won"


def test_unknown_template_is_a_problem_and_given_stages_win():
    _, problems = apply_template({"name": "x", "template": "marketing"})
    assert [(p.code, p.loc) for p in problems] == [("unknown_pipeline_template", ["template"])]
    stages = [{"key": "a", "name": "A", "probability": 0}]
    payload, problems = apply_template({"name": "x", "template": "sales", "stages": stages})
    assert problems == [] and payload["stages"] == stages
