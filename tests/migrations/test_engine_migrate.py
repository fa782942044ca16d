"""``Engine.migrate``, pure: applied once per migration id, no rules or automations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from domain.deal import Actor
from domain.engine import Engine, EngineState
from domain.pipeline import PipelineSnapshot, PipelineSpec

T0 = datetime(2025, 1, 6, 9, tzinfo=UTC)
LATER = T0 + timedelta(hours=3)


def snapshot(pipeline_id: str, stages: list[dict[str, Any]], **spec: Any) -> PipelineSnapshot:
    return PipelineSnapshot(
        pipeline_id=pipeline_id,
        version=spec.pop("version", 1),
        spec=PipelineSpec.model_validate(
            {
                "name": pipeline_id,
                "type": "sales",
                "currency": "USD",
                "probability_mode": "stage",
                "stages": stages,
                **spec,
            }
        ),
    )


OLD = snapshot(
    "old",
    [
        {"key": "lead", "name": "Lead", "probability": 10, "sla": {"target": "PT8H"}},
        {
            "key": "review",
            "name": "Review",
            "probability": 50,
            "approval": {"approvers": ["alice"]},
        },
        {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
    ],
)
NEW = snapshot(
    "new",
    [
        {"key": "new", "name": "New", "probability": 5, "required_fields": ["budget"]},
        {"key": "working", "name": "Working", "probability": 50, "sla": {"target": "P1D"}},
        {"key": "closed", "name": "Closed", "probability": 100, "outcome": "won"},
    ],
    automations=[
        {
            "name": "greet",
            "trigger": {"on": "stage_entered", "stage": "working"},
            "actions": [{"do": "notify", "channel": "log", "to": "owner", "template": "hi"}],
        }
    ],
)


def deal(stage: str = "lead") -> Engine:
    engine, problems = Engine.create(
        OLD,
        deal_id="d1",
        title="Acme",
        value=100,
        currency="USD",
        owner=None,
        fields={},
        stage=stage,
        now=T0,
    )
    assert problems == []
    engine.history.clear()
    return engine


def test_migrates_once_per_migration_id() -> None:
    engine = deal()
    revision = engine.state.revision
    assert engine.migrate(NEW, "working", LATER, "mig_1") is True
    d = engine.deal
    assert (d.pipeline_id, d.pipeline_version, d.stage, d.stage_entered_at) == (
        "new",
        1,
        "working",
        LATER,
    )
    assert d.sla is not None and d.sla.due_at == LATER + timedelta(days=1)
    assert engine.state.revision > revision
    assert [h.kind for h in engine.history] == ["migrated"]
    assert engine.history[0].data == {
        "migration_id": "mig_1",
        "from_pipeline": "old",
        "from_version": 1,
        "from": "lead",
        "to_pipeline": "new",
        "to_version": 1,
        "to": "working",
    }
    assert engine.effects == []  # no automation fired: a bulk move notifies nobody
    assert engine.pipeline is NEW

    engine.history.clear()
    revision = engine.state.revision
    assert engine.migrate(NEW, "new", LATER, "mig_1") is False
    assert engine.deal.stage == "working" and engine.history == []
    assert engine.state.revision == revision
    assert engine.state.migrations == ["mig_1"]


def test_movement_rules_do_not_apply_but_a_pending_approval_is_withdrawn() -> None:
    engine = deal()
    result = engine.request_transition("review", Actor(subject="root", role="admin"), {}, T0)
    assert result.outcome == "pending_approval"
    engine.history.clear()
    # 'new' requires a budget the deal lacks: a migration moves it anyway.
    assert engine.migrate(NEW, "new", LATER, "mig_2")
    assert engine.deal.pending_approval is None
    assert [h.kind for h in engine.history] == ["approval_withdrawn", "migrated"]
    assert engine.deal.stage == "new" and engine.deal.sla is None


def test_a_closed_deal_stays_closed_and_an_outcome_stage_closes() -> None:
    won = deal("won")
    assert won.deal.status == "won"
    assert won.migrate(NEW, "new", LATER, "mig_3")
    assert (won.deal.stage, won.deal.status) == ("new", "won")

    open_deal = deal()
    assert open_deal.migrate(NEW, "closed", LATER, "mig_4")
    assert (open_deal.deal.stage, open_deal.deal.status) == ("closed", "won")
    assert [h.kind for h in open_deal.history] == ["migrated", "deal_closed"]


def test_same_stage_of_a_new_version_keeps_its_clocks() -> None:
    engine = deal()
    sla = engine.deal.sla
    v2 = snapshot("old", [{"key": "lead", "name": "Lead", "probability": 20}], version=2)
    assert engine.migrate(v2, "lead", LATER, "mig_5")
    assert engine.deal.pipeline_version == 2
    assert engine.deal.stage_entered_at == T0
    assert sla is not None and engine.deal.sla is None  # the new version has no SLA there


def test_state_carried_before_migrations_existed_still_loads() -> None:
    dumped = deal().state.model_dump(mode="json")
    del dumped["migrations"]
    assert EngineState.model_validate(dumped).migrations == []
