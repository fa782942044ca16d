"""The pure deal state machine, driven with explicit ``now`` values (no server, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain.deal import Actor
from domain.engine import MAX_CHAIN_DEPTH, DecisionError, Engine
from domain.pipeline import PipelineSnapshot, PipelineSpec

T0 = datetime(2025, 1, 6, 9, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)
ADMIN = Actor(subject="root", role="admin")
USER = Actor(subject="uma", role="viewer")


def stages(**overrides: dict[str, Any]) -> list[dict[str, Any]]:
    base: list[dict[str, Any]] = [
        {"key": "lead", "name": "Lead", "probability": 10},
        {"key": "qualified", "name": "Qualified", "probability": 30},
        {
            "key": "proposal",
            "name": "Proposal",
            "probability": 60,
            "required_fields": ["budget", "contact"],
            "validation": [
                {"expr": "value > `0`", "message": "a proposal needs a value"},
                {"expr": "fields.budget >= `1000`"},
            ],
        },
        {
            "key": "negotiation",
            "name": "Negotiation",
            "probability": 80,
            "approval": {"approvers": ["alice", "bob"], "mode": "any"},
        },
        {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
        {"key": "lost", "name": "Lost", "probability": 0, "outcome": "lost"},
    ]
    for stage in base:
        stage.update(overrides.get(stage["key"], {}))
    return base


def make(
    *,
    stage_overrides: dict[str, dict[str, Any]] | None = None,
    automations: list[dict[str, Any]] | None = None,
    stage: str | None = None,
    value: float = 5000,
    fields: dict[str, Any] | None = None,
    owner: str | None = "olga",
    now: datetime = T0,
    **spec: Any,
) -> Engine:
    pipeline_spec = PipelineSpec.model_validate(
        {
            "name": "Sales",
            "type": "sales",
            "currency": "USD",
            "probability_mode": "stage",
            "stages": spec.pop("stage_list", None) or stages(**(stage_overrides or {})),
            "automations": automations or [],
            **spec,
        }
    )
    snapshot = PipelineSnapshot(pipeline_id="p1", version=1, spec=pipeline_spec)
    engine, problems = Engine.create(
        snapshot,
        deal_id="d1",
        title="Acme",
        value=value,
        currency="USD",
        owner=owner,
        fields=fields or {},
        stage=stage,
        now=now,
    )
    assert problems == []
    return engine


def drain(engine: Engine) -> tuple[list[str], list[Any]]:
    """History kinds and effects produced since the last drain (the workflow's outboxes)."""
    kinds = [h.kind for h in engine.history]
    effects = list(engine.effects)
    engine.history.clear()
    engine.effects.clear()
    return kinds, effects


def entries(engine: Engine, kind: str) -> list[dict[str, Any]]:
    return [h.data for h in engine.history if h.kind == kind]


# --------------------------------------------------------------------------- creation


def test_create_enters_the_first_stage_and_records_it() -> None:
    engine = make()
    assert engine.deal.stage == "lead"
    assert engine.deal.stage_entered_at == T0
    assert engine.deal.status == "open"
    assert [h.kind for h in engine.history] == ["deal_created"]
    assert [h.seq for h in engine.history] == [1]


def test_create_with_an_unknown_stage_is_a_problem() -> None:
    spec = PipelineSpec.model_validate(
        {
            "name": "S",
            "type": "sales",
            "currency": "USD",
            "probability_mode": "stage",
            "stages": stages(),
        }
    )
    _, problems = Engine.create(
        PipelineSnapshot(pipeline_id="p1", version=1, spec=spec),
        deal_id="d1",
        title="",
        value=0,
        currency="USD",
        owner=None,
        fields={},
        stage="nowhere",
        now=T0,
    )
    assert [p.code for p in problems] == ["unknown_stage"]


# --------------------------------------------------------------------------- transitions


def test_a_move_to_the_next_stage_is_made() -> None:
    engine = make()
    drain(engine)
    revision = engine.state.revision
    now = T0 + timedelta(hours=3)
    result = engine.request_transition("qualified", USER, {"source": "web"}, now)
    assert result.outcome == "moved"
    assert engine.deal.stage == "qualified"
    assert engine.deal.stage_entered_at == now
    assert engine.deal.fields == {"source": "web"}
    assert engine.state.revision > revision
    [changed] = entries(engine, "stage_changed")
    assert changed["from"] == "lead"
    assert changed["to"] == "qualified"
    assert changed["by"] == "uma"
    assert changed["fields"] == ["source"]


def test_a_refused_move_lists_every_broken_rule_and_changes_nothing() -> None:
    engine = make(value=0)
    drain(engine)
    before = engine.state.model_dump()
    result = engine.request_transition("proposal", USER, {"budget": 10}, T0 + DAY)
    assert result.outcome == "refused"
    codes = sorted(p.code for p in result.problems)
    assert codes == [
        "missing_required_field",  # contact
        "skip_denied",  # lead -> proposal skips qualified
        "validation_failed",  # value > 0
        "validation_failed",  # budget >= 1000
    ]
    msgs = " | ".join(p.msg for p in result.problems)
    assert "'contact'" in msgs
    assert "a proposal needs a value" in msgs
    assert "'qualified'" in msgs
    assert engine.state.model_dump() == before  # revision, stage, fields: all unchanged
    assert engine.history == []
    assert engine.effects == []


def test_moving_back_follows_the_rules_by_subject() -> None:
    engine = make(stage="qualified", rules={"backward": ["boss"]})
    before = engine.state.model_dump()
    refused = engine.request_transition("lead", USER, {}, T0)
    assert [p.code for p in refused.problems] == ["backward_denied"]
    assert engine.state.model_dump() == before
    assert engine.request_transition("lead", Actor(subject="boss"), {}, T0).outcome == "moved"


def test_admins_may_skip_and_unknown_or_same_stage_is_refused() -> None:
    engine = make(fields={"budget": 2000, "contact": "c"})
    assert [p.code for p in engine.request_transition("nope", ADMIN, {}, T0).problems] == [
        "unknown_stage"
    ]
    assert [p.code for p in engine.request_transition("lead", ADMIN, {}, T0).problems] == [
        "same_stage"
    ]
    assert engine.request_transition("proposal", ADMIN, {}, T0).outcome == "moved"


@pytest.mark.parametrize("outcome", ["won", "lost"])
def test_an_outcome_stage_closes_the_deal(outcome: str) -> None:
    engine = make(stage_overrides={"lead": {"sla": {"target": "PT4H"}, "rotting": "P1D"}})
    assert engine.deal.sla is not None
    assert engine.request_transition(outcome, USER, {}, T0).outcome == "moved"
    assert engine.deal.status == outcome
    assert engine.deal.sla is None
    assert entries(engine, "deal_closed") == [{"status": outcome, "stage": outcome}]
    assert engine.deadlines() == []
    drain(engine)
    engine.advance(T0 + 30 * DAY)
    assert engine.history == [] and not engine.deal.is_rotting
    refused = engine.request_transition("lead", ADMIN, {}, T0 + DAY)
    assert "deal_closed" in [p.code for p in refused.problems]


# --------------------------------------------------------------------------- approvals


def approval_engine(**approval: Any) -> Engine:
    spec = {"approvers": ["alice", "bob"], "mode": "any", **approval}
    return make(stage="proposal", stage_overrides={"negotiation": {"approval": spec}})


def test_a_move_into_an_approval_stage_waits_and_notifies_the_approvers() -> None:
    engine = approval_engine()
    drain(engine)
    result = engine.request_transition("negotiation", USER, {"discount": 5}, T0)
    assert result.outcome == "pending_approval"
    assert result.approval_id
    assert engine.deal.stage == "proposal"
    pending = engine.deal.pending_approval
    assert pending is not None and pending.approval_id == result.approval_id
    assert "discount" not in engine.deal.fields  # held with the move
    [effect] = engine.effects
    assert effect.kind == "notify"
    assert effect.data["to"] == ["alice", "bob"]
    assert effect.data["template"] == "approval_requested"
    again = engine.request_transition("negotiation", USER, {}, T0)
    assert [p.code for p in again.problems] == ["approval_pending"]


def test_any_mode_one_approval_moves_and_applies_the_held_fields() -> None:
    engine = approval_engine()
    apr = engine.request_transition("negotiation", USER, {"discount": 5}, T0).approval_id
    assert apr is not None
    result = engine.decide(T0 + DAY, apr, "bob", "approve", "ok")
    assert result.outcome == "approved"
    assert engine.deal.stage == "negotiation"
    assert engine.deal.pending_approval is None
    assert engine.deal.fields["discount"] == 5
    [resolved] = entries(engine, "approval_resolved")
    assert resolved["status"] == "approved"
    [changed] = entries(engine, "stage_changed")
    assert changed["by"] == "uma"  # the requester's move


def test_all_mode_needs_every_approver() -> None:
    engine = approval_engine(mode="all")
    apr = engine.request_transition("negotiation", USER, {}, T0).approval_id
    assert apr is not None
    assert engine.decide(T0, apr, "alice", "approve").outcome == "pending"
    assert engine.deal.stage == "proposal"
    assert engine.deal.pending_approval is not None
    with pytest.raises(DecisionError) as again:
        engine.decide(T0, apr, "alice", "approve")
    assert again.value.kind == "conflict"
    assert engine.decide(T0, apr, "bob", "approve").outcome == "approved"
    assert engine.deal.stage == "negotiation"


def test_a_rejection_keeps_the_deal_and_its_fields() -> None:
    engine = approval_engine(mode="all")
    apr = engine.request_transition("negotiation", USER, {"discount": 50}, T0).approval_id
    assert apr is not None
    assert engine.decide(T0, apr, "alice", "reject", "too much").outcome == "rejected"
    assert engine.deal.stage == "proposal"
    assert engine.deal.pending_approval is None
    assert "discount" not in engine.deal.fields


def test_decisions_by_strangers_are_forbidden_and_late_ones_conflict() -> None:
    engine = approval_engine()
    apr = engine.request_transition("negotiation", USER, {}, T0).approval_id
    assert apr is not None
    before = engine.state.model_dump()
    with pytest.raises(DecisionError) as stranger:
        engine.decide(T0, apr, "mallory", "approve")
    assert stranger.value.kind == "forbidden"
    assert engine.state.model_dump() == before
    engine.decide(T0, apr, "alice", "approve")
    with pytest.raises(DecisionError) as late:
        engine.decide(T0, apr, "bob", "approve")
    assert late.value.kind == "conflict"


def test_timeout_escalates_with_a_new_deadline() -> None:
    engine = approval_engine(mode="all", timeout="P2D", on_timeout="escalate", escalate_to=["cem"])
    apr = engine.request_transition("negotiation", USER, {}, T0).approval_id
    assert apr is not None
    assert engine.next_deadline() == T0 + 2 * DAY
    drain(engine)
    engine.advance(T0 + 2 * DAY - timedelta(microseconds=1))
    assert engine.history == []
    engine.advance(T0 + 2 * DAY)
    pending = engine.deal.pending_approval
    assert pending is not None and pending.escalated
    assert pending.escalated_to == ["cem"]
    assert pending.due_at == T0 + 4 * DAY
    assert engine.next_deadline() == T0 + 4 * DAY
    [escalated] = entries(engine, "approval_escalated")
    assert escalated == {"approval_id": apr, "to": ["cem"]}
    [effect] = engine.effects
    assert effect.data["to"] == ["cem"] and effect.data["template"] == "approval_escalated"
    assert Engine.eligible_approvers(pending) == ["alice", "bob", "cem"]
    # the escalation approver decides alone, even in "all" mode
    assert engine.decide(T0 + 3 * DAY, apr, "cem", "approve").outcome == "approved"
    assert engine.deal.stage == "negotiation"


@pytest.mark.parametrize(
    ("on_timeout", "stage"), [("reject", "proposal"), ("approve", "negotiation")]
)
def test_timeout_rejects_or_approves_as_configured(on_timeout: str, stage: str) -> None:
    engine = approval_engine(timeout="PT8H", on_timeout=on_timeout)
    apr = engine.request_transition("negotiation", USER, {}, T0).approval_id
    engine.advance(T0 + timedelta(hours=8))
    assert engine.deal.pending_approval is None
    assert engine.deal.stage == stage
    [resolved] = entries(engine, "approval_resolved")
    assert resolved["approval_id"] == apr
    assert resolved["status"] == ("approved" if on_timeout == "approve" else "rejected")
    assert resolved["reason"] == "approval timed out"


def test_the_request_is_withdrawn_when_the_deal_moves_elsewhere() -> None:
    engine = approval_engine(timeout="P1D")
    apr = engine.request_transition("negotiation", USER, {}, T0).approval_id
    assert apr is not None
    assert engine.request_transition("lost", USER, {}, T0 + timedelta(hours=1)).outcome == "moved"
    assert engine.deal.pending_approval is None
    [withdrawn] = entries(engine, "approval_withdrawn")
    assert withdrawn["approval_id"] == apr
    assert engine.deadlines() == []
    with pytest.raises(DecisionError) as exc:
        engine.decide(T0, apr, "alice", "approve")
    assert exc.value.kind == "conflict"


# --------------------------------------------------------------------------- SLA


def test_sla_goes_ok_warning_breached_at_the_exact_instants() -> None:
    engine = make(stage_overrides={"lead": {"sla": {"target": "PT10H", "warn_at": 0.5}}})
    sla = engine.deal.sla
    assert sla is not None
    assert (sla.warn_at, sla.due_at, sla.state) == (
        T0 + timedelta(hours=5),
        T0 + timedelta(hours=10),
        "ok",
    )
    assert engine.next_deadline() == T0 + timedelta(hours=5)
    drain(engine)
    tick = timedelta(microseconds=1)
    engine.advance(T0 + timedelta(hours=5) - tick)
    assert sla.state == "ok" and engine.history == []
    engine.advance(T0 + timedelta(hours=5))
    assert sla.state == "warning"
    assert drain(engine)[0] == ["sla_warning"]
    assert engine.next_deadline() == T0 + timedelta(hours=10)
    engine.advance(T0 + timedelta(hours=10) - tick)
    assert sla.state == "warning" and engine.history == []
    engine.advance(T0 + timedelta(hours=10))
    assert sla.state == "breached"
    kinds, effects = drain(engine)
    assert kinds == ["sla_breached"]
    assert [(e.kind, e.data["template"], e.data["to"]) for e in effects] == [
        ("notify", "sla_breached", "olga")
    ]
    assert engine.next_deadline() is None
    engine.advance(T0 + timedelta(hours=11))
    assert drain(engine) == ([], [])


def test_sla_is_cancelled_on_exit() -> None:
    engine = make(stage_overrides={"lead": {"sla": {"target": "PT10H"}}})
    engine.request_transition("qualified", USER, {}, T0 + timedelta(hours=1))
    assert engine.deal.sla is None
    drain(engine)
    engine.advance(T0 + DAY)
    assert engine.history == []


def test_sla_respects_business_hours_and_holidays() -> None:
    friday = datetime(2025, 1, 10, 15, tzinfo=UTC)
    calendar = {"timezone": "UTC", "start": "09:00", "end": "17:00", "holidays": ["2025-01-13"]}
    engine = make(
        now=friday,
        stage_overrides={"lead": {"sla": {"target": "PT4H", "warn_at": 0.5}}},
        calendar=calendar,
    )
    sla = engine.deal.sla
    assert sla is not None
    # 2 working hours: Friday 15:00-17:00; the other 2 on Tuesday (Monday is a holiday)
    assert sla.warn_at == datetime(2025, 1, 10, 17, tzinfo=UTC)
    assert sla.due_at == datetime(2025, 1, 14, 11, tzinfo=UTC)
    engine.advance(datetime(2025, 1, 13, 16, tzinfo=UTC))  # the holiday: warning only
    assert sla.state == "warning"
    engine.advance(datetime(2025, 1, 14, 10, 59, 59, tzinfo=UTC))
    assert sla.state == "warning"
    engine.advance(datetime(2025, 1, 14, 11, tzinfo=UTC))
    assert sla.state == "breached"


def test_business_hours_in_a_local_time_zone() -> None:
    # 17:00 in Berlin (winter) is 16:00 UTC; PT1H from Friday 15:30 UTC (16:30 local) goes
    # 30 minutes on Friday and 30 on Monday from 09:00 local = 08:00 UTC.
    friday = datetime(2025, 1, 10, 15, 30, tzinfo=UTC)
    engine = make(
        now=friday,
        stage_overrides={"lead": {"sla": {"target": "PT1H"}}},
        calendar={"timezone": "Europe/Berlin"},
    )
    assert engine.deal.sla is not None
    assert engine.deal.sla.due_at == datetime(2025, 1, 13, 8, 30, tzinfo=UTC)


# --------------------------------------------------------------------------- rotting


def rotting_engine() -> Engine:
    return make(stage_overrides={"lead": {"rotting": "P14D"}})


def test_13_days_in_a_14_day_rotting_stage_is_not_rotting_15_is_notified_once() -> None:
    engine = rotting_engine()
    assert engine.rotting_deadline() == T0 + 14 * DAY
    assert engine.next_deadline() == T0 + 14 * DAY
    drain(engine)
    engine.advance(T0 + 13 * DAY)
    assert not engine.deal.is_rotting
    assert drain(engine) == ([], [])
    engine.advance(T0 + 15 * DAY)
    assert engine.deal.is_rotting
    kinds, effects = drain(engine)
    assert kinds == ["rotting"]
    assert [(e.kind, e.data["template"]) for e in effects] == [("notify", "deal_rotting")]
    assert engine.next_deadline() is None
    engine.advance(T0 + 16 * DAY)
    engine.advance(T0 + 40 * DAY)
    assert drain(engine) == ([], [])
    assert engine.deal.is_rotting


def test_activity_on_day_10_moves_the_deadline_to_day_24() -> None:
    engine = rotting_engine()
    engine.advance(T0 + 10 * DAY)
    engine.activity(T0 + 10 * DAY, "call")
    assert engine.rotting_deadline() == T0 + 24 * DAY
    engine.advance(T0 + 15 * DAY)
    assert not engine.deal.is_rotting
    engine.advance(T0 + 24 * DAY - timedelta(seconds=1))
    assert not engine.deal.is_rotting
    engine.advance(T0 + 24 * DAY)
    assert engine.deal.is_rotting


def test_an_update_or_a_stage_change_also_resets_the_clock_and_clears_rotting() -> None:
    engine = make(stage_overrides={"lead": {"rotting": "P14D"}, "qualified": {"rotting": "P14D"}})
    engine.advance(T0 + 15 * DAY)
    assert engine.deal.is_rotting
    drain(engine)
    engine.update(T0 + 16 * DAY, {"fields": {"size": "L"}})
    assert not engine.deal.is_rotting
    assert "rotting_cleared" in drain(engine)[0]
    assert engine.rotting_deadline() == T0 + 30 * DAY
    engine.request_transition("qualified", USER, {}, T0 + 20 * DAY)
    assert engine.rotting_deadline() == T0 + 34 * DAY


def test_snooze_holds_rotting_until_the_date() -> None:
    engine = rotting_engine()
    engine.advance(T0 + 15 * DAY)
    assert engine.deal.is_rotting
    engine.snooze_rotting(T0 + 15 * DAY, T0 + 20 * DAY)
    assert not engine.deal.is_rotting
    assert engine.rotting_deadline() == T0 + 20 * DAY
    drain(engine)
    engine.advance(T0 + 19 * DAY)
    assert not engine.deal.is_rotting
    engine.advance(T0 + 20 * DAY)
    assert engine.deal.is_rotting
    assert drain(engine)[0] == ["rotting"]


# --------------------------------------------------------------------------- automations


def auto(on: str, actions: list[dict[str, Any]], name: str | None = None, **trigger: Any) -> dict:
    return {
        "name": name or f"{on}-{len(actions)}",
        "trigger": {"on": on, **trigger},
        "actions": actions,
    }


def test_stage_entered_and_stage_exited_triggers() -> None:
    engine = make(
        automations=[
            auto(
                "stage_entered",
                [{"do": "set_field", "field": "hot", "value": True}],
                stage="qualified",
            ),
            auto(
                "stage_exited",
                [{"do": "create_task", "template": "Debrief {title}", "due_in": "P1D"}],
                stage="lead",
            ),
            auto(
                "stage_entered",
                [{"do": "set_field", "field": "never", "value": 1}],
                stage="proposal",
            ),
        ]
    )
    drain(engine)
    now = T0 + DAY
    engine.request_transition("qualified", USER, {}, now)
    assert engine.deal.fields == {"hot": True}
    kinds, effects = drain(engine)
    assert kinds == ["stage_changed", "automation_ran", "automation_ran", "field_set"]
    [task] = effects
    assert task.kind == "create_task"
    assert task.data["template"] == "Debrief {title}"
    assert task.data["due_at"] == (now + DAY).isoformat()
    assert task.data["context"]["stage"] == "qualified"


def test_field_changed_trigger_with_round_robin_assignment() -> None:
    engine = make(
        owner=None,
        automations=[
            auto(
                "field_changed",
                [{"do": "assign_owner", "strategy": "round_robin", "among": ["ann", "ben", "cid"]}],
                name="rr",
                field="region",
            )
        ],
    )
    owners = []
    for i, region in enumerate(["eu", "us", "apac", "eu"]):
        engine.update(T0 + i * DAY, {"fields": {"region": region}})
        owners.append(engine.deal.owner)
    assert owners == ["ann", "ben", "cid", "ann"]
    engine.update(T0 + 5 * DAY, {"fields": {"region": "eu", "other": 1}})  # region unchanged
    assert engine.deal.owner == "ann"
    assert engine.state.round_robin == {"rr": 4}
    assert len(entries(engine, "owner_assigned")) == 4  # the 5th update assigned nobody


def test_other_assignment_strategies() -> None:
    engine = make(
        owner=None,
        automations=[
            auto(
                "field_changed",
                [{"do": "assign_owner", "strategy": "by_field", "field": "rep"}],
                field="rep",
            ),
            auto(
                "field_changed",
                [{"do": "assign_owner", "strategy": "least_loaded", "among": ["x", "y"]}],
                field="pool",
            ),
        ],
    )
    engine.update(T0, {"fields": {"rep": "rita"}})
    assert engine.deal.owner == "rita"
    drain(engine)
    engine.update(T0, {"fields": {"pool": True}})
    [effect] = engine.effects
    assert (effect.kind, effect.data) == ("assign_owner", {"among": ["x", "y"]})


def test_time_in_stage_fires_once_at_its_instant() -> None:
    engine = make(
        automations=[
            auto(
                "time_in_stage",
                [{"do": "notify", "channel": "email", "to": "boss@x", "template": "t"}],
                stage="lead",
                after="P3D",
            )
        ]
    )
    assert engine.next_deadline() == T0 + 3 * DAY
    drain(engine)
    engine.advance(T0 + 3 * DAY - timedelta(seconds=1))
    assert engine.effects == []
    engine.advance(T0 + 3 * DAY)
    [effect] = engine.effects
    assert effect.data["channel"] == "email" and effect.data["to"] == "boss@x"
    assert engine.next_deadline() is None
    drain(engine)
    engine.advance(T0 + 10 * DAY)
    assert engine.effects == []


def test_sla_and_rotting_triggers_run_their_actions() -> None:
    engine = make(
        stage_overrides={"lead": {"sla": {"target": "PT10H", "warn_at": 0.5}, "rotting": "P2D"}},
        automations=[
            auto("sla_warning", [{"do": "create_task", "template": "hurry"}], stage="lead"),
            auto(
                "sla_breached",
                [{"do": "call_integration", "integration": "crm", "payload": {"a": 1}}],
            ),
            auto(
                "rotting",
                [{"do": "notify", "channel": "webhook", "to": "http://h", "template": "rot"}],
            ),
        ],
    )
    drain(engine)
    engine.advance(T0 + timedelta(hours=5))
    assert [e.kind for e in engine.effects] == ["create_task"]
    drain(engine)
    engine.advance(T0 + timedelta(hours=10))
    kinds = [(e.kind, e.automation) for e in engine.effects]
    assert kinds == [("notify", None), ("call_integration", "sla_breached-1")]
    assert engine.effects[1].data["payload"] == {"a": 1}
    drain(engine)
    engine.advance(T0 + 2 * DAY)
    assert [(e.kind, e.data["template"]) for e in engine.effects] == [
        ("notify", "deal_rotting"),
        ("notify", "rot"),
    ]
    keys = [e.key for e in engine.effects]
    assert len(set(keys)) == 2 and all(k.startswith("d1:") for k in keys)


def test_move_to_stage_action_and_conditions() -> None:
    rules = [
        {
            **auto(
                "stage_entered",
                [{"do": "move_to_stage", "stage": "won"}],
                name="big",
                stage="qualified",
            ),
            "conditions": [{"expr": "value > `10000`"}],
        },
    ]
    small = make(value=500, automations=rules)
    small.request_transition("qualified", USER, {}, T0)
    assert small.deal.stage == "qualified"
    assert entries(small, "automation_ran") == []
    big = make(value=50_000, automations=rules)
    big.request_transition("qualified", USER, {}, T0)
    assert big.deal.stage == "won" and big.deal.status == "won"
    assert [e["by"] for e in entries(big, "stage_changed")] == ["uma", "automation:big"]


def test_a_condition_that_cannot_be_evaluated_does_not_hold() -> None:
    rules = [
        {
            **auto(
                "stage_entered", [{"do": "set_field", "field": "x", "value": 1}], stage="qualified"
            ),
            "conditions": [{"expr": "length(value) > `1`"}],
        },
    ]
    engine = make(automations=rules)
    engine.request_transition("qualified", USER, {}, T0)
    assert "x" not in engine.deal.fields
    [failed] = entries(engine, "automation_condition_failed")
    assert failed["expr"] == "length(value) > `1`"


def test_an_automatic_move_that_breaks_a_rule_is_recorded_not_made() -> None:
    engine = make(
        automations=[
            auto("stage_entered", [{"do": "move_to_stage", "stage": "proposal"}], stage="qualified")
        ]
    )
    engine.request_transition("qualified", USER, {}, T0)
    assert engine.deal.stage == "qualified"
    [refused] = entries(engine, "automation_move_refused")
    assert refused["to"] == "proposal"
    assert len(refused["problems"]) == 3  # budget, contact, budget >= 1000


def test_the_same_automation_runs_at_most_once_per_chain() -> None:
    engine = make(
        automations=[
            auto(
                "stage_entered",
                [{"do": "move_to_stage", "stage": "lead"}],
                name="back",
                stage="qualified",
            ),
            auto(
                "stage_entered",
                [{"do": "move_to_stage", "stage": "qualified"}],
                name="fwd",
                stage="lead",
            ),
        ]
    )
    drain(engine)
    engine.request_transition("qualified", USER, {}, T0)
    # qualified -(back)-> lead -(fwd)-> qualified -(back again: stopped)
    assert engine.deal.stage == "qualified"
    stopped = entries(engine, "automation_loop_stopped")
    assert stopped == [{"automation": "back", "reason": "already ran in this chain of moves"}]
    assert [e["by"] for e in entries(engine, "stage_changed")] == [
        "uma",
        "automation:back",
        "automation:fwd",
    ]
    # a new chain (a person's move) may run them again
    drain(engine)
    engine.request_transition("proposal", ADMIN, {"budget": 2000, "contact": "c"}, T0 + DAY)
    engine.request_transition("qualified", ADMIN, {}, T0 + 2 * DAY)
    assert len(entries(engine, "automation_ran")) == 2
    assert len(entries(engine, "automation_loop_stopped")) == 1


def test_a_chain_stops_at_the_depth_limit_and_says_so() -> None:
    n = MAX_CHAIN_DEPTH + 3
    stage_list = [{"key": f"s{i}", "name": f"S{i}", "probability": 0} for i in range(n)]
    automations = [
        auto(
            "stage_entered",
            [{"do": "move_to_stage", "stage": f"s{i + 1}"}],
            name=f"a{i}",
            stage=f"s{i}",
        )
        for i in range(1, n - 1)
    ]
    engine = make(stage_list=stage_list, automations=automations)
    engine.request_transition("s1", USER, {}, T0)
    assert engine.deal.stage == f"s{MAX_CHAIN_DEPTH + 1}"
    stopped = entries(engine, "automation_loop_stopped")
    assert stopped == [
        {"automation": f"a{MAX_CHAIN_DEPTH + 1}", "reason": f"chain depth limit {MAX_CHAIN_DEPTH}"}
    ]


def test_set_field_chains_into_field_changed() -> None:
    engine = make(
        automations=[
            auto(
                "stage_entered",
                [{"do": "set_field", "field": "tier", "value": "gold"}],
                stage="qualified",
            ),
            auto(
                "field_changed",
                [{"do": "notify", "to": "vip", "template": "gold deal"}],
                field="tier",
            ),
        ]
    )
    drain(engine)
    engine.request_transition("qualified", USER, {}, T0)
    [effect] = engine.effects
    assert effect.data["to"] == "vip"
    assert effect.data["context"]["stage"] == "qualified"


def test_fields_sent_with_a_move_fire_field_changed() -> None:
    engine = make(
        automations=[
            auto(
                "field_changed",
                [{"do": "set_field", "field": "seen", "value": True}],
                field="source",
            )
        ]
    )
    engine.request_transition("qualified", USER, {"source": "ads"}, T0)
    assert engine.deal.fields == {"source": "ads", "seen": True}


def test_an_exit_automation_that_moves_starts_from_the_new_stage() -> None:
    engine = make(
        automations=[
            auto("stage_exited", [{"do": "move_to_stage", "stage": "lost"}], stage="qualified")
        ],
        stage="qualified",
    )
    engine.request_transition("lead", USER, {}, T0)
    assert engine.deal.stage == "lost"
    assert [(e["from"], e["to"]) for e in entries(engine, "stage_changed")] == [
        ("qualified", "lead"),
        ("lead", "lost"),
    ]
