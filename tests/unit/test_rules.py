from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain.deal import Actor, ApprovalDecision, DealState, PendingApproval, Problem
from domain.pipeline import PipelineSpec
from domain.rules import (
    approval_outcome,
    check_transition,
    needs_approval,
    permits,
    probability_of,
    status_for,
)

T0 = datetime(2025, 1, 6, 9, tzinfo=UTC)

ADMIN = Actor(subject="root", role="admin")
ALICE = Actor(subject="alice", role="approver")
BOB = Actor(subject="bob", role="approver")
ENGINE = Actor(automatic=True)


def make_spec(**changes: Any) -> PipelineSpec:
    data: dict[str, Any] = {
        "name": "Sales",
        "type": "sales",
        "currency": "USD",
        "probability_mode": "stage",
        "stages": [
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
                "approval": {"approvers": ["alice", "bob"], "mode": "all"},
            },
            {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
            {"key": "lost", "name": "Lost", "probability": 0, "outcome": "lost"},
        ],
    }
    data.update(changes)
    return PipelineSpec.model_validate(data)


SPEC = make_spec()


def make_deal(stage: str = "lead", **changes: Any) -> DealState:
    data: dict[str, Any] = {
        "deal_id": "d1",
        "pipeline_id": "p1",
        "pipeline_version": 1,
        "stage": stage,
        "stage_entered_at": T0,
        "created_at": T0,
        "last_activity_at": T0,
        "value": 5000,
    }
    data.update(changes)
    return DealState.model_validate(data)


def pending(to_stage: str = "negotiation", **changes: Any) -> PendingApproval:
    data: dict[str, Any] = {
        "approval_id": "apr_1",
        "to_stage": to_stage,
        "from_stage": "proposal",
        "approvers": ["alice", "bob"],
        "mode": "all",
        "requested_at": T0,
    }
    data.update(changes)
    return PendingApproval.model_validate(data)


def decision(subject: str, verdict: str, minutes: int = 1) -> ApprovalDecision:
    return ApprovalDecision(subject=subject, decision=verdict, at=T0 + timedelta(minutes=minutes))


def codes(problems: list[Problem]) -> list[str]:
    return [p.code for p in problems]


GOOD_FIELDS = {"budget": 2000, "contact": "c@x"}


# -- the simple cases ----------------------------------------------------------------------------


def test_next_stage_is_allowed():
    assert check_transition(SPEC, make_deal("lead"), "qualified", ALICE) == []


def test_closed_deals_cannot_move():
    deal = make_deal("won", status="won")
    problems = check_transition(SPEC, deal, "lead", ADMIN)
    assert codes(problems) == ["deal_closed"]
    assert "won" in problems[0].msg


def test_unknown_stage():
    problems = check_transition(SPEC, make_deal(), "nowhere", ADMIN)
    assert [(p.code, p.loc) for p in problems] == [("unknown_stage", ["to_stage"])]
    assert "'nowhere'" in problems[0].msg


def test_same_stage():
    assert codes(check_transition(SPEC, make_deal("qualified"), "qualified", ADMIN)) == [
        "same_stage"
    ]


def test_pending_approval_for_another_move_blocks_everyone():
    deal = make_deal("proposal", fields=GOOD_FIELDS, pending_approval=pending("negotiation"))
    for actor in (ADMIN, ALICE, ENGINE):
        problems = check_transition(SPEC, deal, "lost", actor)
        assert codes(problems) == ["approval_pending"]
        assert "apr_1" in problems[0].msg


def test_pending_approval_for_the_same_move_is_not_a_refusal():
    deal = make_deal("proposal", fields=GOOD_FIELDS, pending_approval=pending("negotiation"))
    assert check_transition(SPEC, deal, "negotiation", ADMIN) == []


# -- skipping ------------------------------------------------------------------------------------


def test_skipping_is_denied_by_default():
    problems = check_transition(SPEC, make_deal("lead"), "negotiation", ALICE)
    assert codes(problems) == ["skip_denied"]
    assert "'qualified', 'proposal'" in problems[0].msg


def test_automatic_actor_without_admin_role_obeys_skip_rules():
    assert codes(check_transition(SPEC, make_deal("lead"), "negotiation", ENGINE)) == [
        "skip_denied"
    ]


def test_admins_may_skip():
    assert check_transition(SPEC, make_deal("lead"), "negotiation", ADMIN) == []


def test_skip_allow():
    spec = make_spec(rules={"skip": "allow"})
    assert check_transition(spec, make_deal("lead"), "negotiation", BOB) == []


def test_skip_list_allows_only_listed_subjects():
    spec = make_spec(rules={"skip": ["alice"]})
    assert check_transition(spec, make_deal("lead"), "negotiation", ALICE) == []
    assert codes(check_transition(spec, make_deal("lead"), "negotiation", BOB)) == ["skip_denied"]
    anonymous = Actor(role="approver")
    assert codes(check_transition(spec, make_deal("lead"), "negotiation", anonymous)) == [
        "skip_denied"
    ]


@pytest.mark.parametrize("outcome", ["won", "lost"])
def test_outcome_stages_can_be_reached_from_any_open_stage(outcome):
    assert check_transition(SPEC, make_deal("lead"), outcome, BOB) == []


def test_outcome_stages_between_are_not_skipped_stages():
    spec = make_spec(
        stages=[
            {"key": "a", "name": "A", "probability": 10},
            {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
            {"key": "lost", "name": "Lost", "probability": 0, "outcome": "lost"},
        ]
    )
    assert check_transition(spec, make_deal("a"), "lost", BOB) == []


# -- moving back ---------------------------------------------------------------------------------


def test_backward_is_allowed_by_default():
    assert check_transition(SPEC, make_deal("negotiation"), "lead", BOB) == []


def test_backward_deny():
    spec = make_spec(rules={"backward": "deny"})
    problems = check_transition(spec, make_deal("qualified"), "lead", BOB)
    assert codes(problems) == ["backward_denied"]
    assert check_transition(spec, make_deal("qualified"), "lead", ADMIN) == []


def test_backward_list():
    spec = make_spec(rules={"backward": ["bob"]})
    assert check_transition(spec, make_deal("qualified"), "lead", BOB) == []
    assert codes(check_transition(spec, make_deal("qualified"), "lead", ALICE)) == [
        "backward_denied"
    ]


def test_backward_by_one_is_not_a_skip():
    spec = make_spec(rules={"skip": "deny", "backward": "allow"})
    assert check_transition(spec, make_deal("negotiation"), "lead", BOB) == []


def test_deal_in_a_stage_the_pipeline_no_longer_has_can_move():
    # e.g. after a new pipeline version: neither skipping nor moving back can be judged
    spec = make_spec(rules={"skip": "deny", "backward": "deny"})
    assert check_transition(spec, make_deal("retired"), "qualified", BOB) == []


# -- required fields and validation --------------------------------------------------------------


def test_required_fields_of_the_target():
    deal = make_deal("qualified", fields={"contact": "  "})
    problems = check_transition(SPEC, deal, "proposal", BOB)
    missing = [p for p in problems if p.code == "missing_required_field"]
    assert [p.loc for p in missing] == [["fields", "budget"], ["fields", "contact"]]


@pytest.mark.parametrize("value", [None, "", "   "])
def test_empty_values_count_as_missing(value):
    deal = make_deal("qualified", fields={"budget": 5000})
    problems = check_transition(SPEC, deal, "proposal", BOB, {"contact": value})
    assert [p.loc for p in problems] == [["fields", "contact"]]


@pytest.mark.parametrize("value", [0, False, [], "x"])
def test_other_falsy_values_are_present(value):
    deal = make_deal("qualified", fields={"budget": 5000})
    assert check_transition(SPEC, deal, "proposal", BOB, {"contact": value}) == []


def test_fields_sent_with_the_move_are_merged_over_the_deal():
    deal = make_deal("qualified", fields={"budget": 10, "contact": "c@x"})
    assert check_transition(SPEC, deal, "proposal", BOB, {"budget": 2000}) == []
    problems = check_transition(SPEC, deal, "proposal", BOB, {"budget": None})
    assert codes(problems) == ["missing_required_field", "validation_failed"]


def test_fields_argument_is_not_mutated_and_deal_is_unchanged():
    deal = make_deal("qualified", fields={"budget": 10, "contact": "c@x"})
    sent = {"budget": 2000}
    check_transition(SPEC, deal, "proposal", BOB, sent)
    assert sent == {"budget": 2000}
    assert deal.fields == {"budget": 10, "contact": "c@x"}


def test_validation_rules_use_message_or_expression():
    deal = make_deal("qualified", value=0, fields={"budget": 10, "contact": "c@x"})
    problems = check_transition(SPEC, deal, "proposal", BOB)
    assert [(p.code, p.loc, p.msg) for p in problems] == [
        ("validation_failed", ["validation", 0], "a proposal needs a value"),
        ("validation_failed", ["validation", 1], "'proposal' requires fields.budget >= `1000`"),
    ]


def test_validation_that_cannot_be_computed_fails():
    spec = make_spec(
        stages=[
            {"key": "a", "name": "A", "probability": 1},
            {"key": "b", "name": "B", "probability": 2, "validation": [{"expr": "length(value)"}]},
        ]
    )
    problems = check_transition(spec, make_deal("a"), "b", BOB)
    assert codes(problems) == ["validation_failed"]
    assert "length(value)" in problems[0].msg


def test_validation_sees_the_deal_document():
    spec = make_spec(
        stages=[
            {"key": "a", "name": "A", "probability": 1},
            {
                "key": "b",
                "name": "B",
                "probability": 2,
                "validation": [{"expr": "owner == 'alice' && currency == 'EUR' && stage == 'a'"}],
            },
        ]
    )
    assert check_transition(spec, make_deal("a", owner="alice", currency="EUR"), "b", BOB) == []
    assert codes(check_transition(spec, make_deal("a", owner="bob"), "b", BOB)) == [
        "validation_failed"
    ]


def test_every_refusal_is_listed_at_once():
    spec = make_spec(rules={"skip": "deny"})
    deal = make_deal("lead", value=0, pending_approval=pending("lost"))
    problems = check_transition(spec, deal, "proposal", BOB)
    assert codes(problems) == [
        "approval_pending",
        "skip_denied",
        "missing_required_field",
        "missing_required_field",
        "validation_failed",
        "validation_failed",
    ]
    assert status_for(problems) == 422


def test_closed_and_unknown_together():
    problems = check_transition(SPEC, make_deal("won", status="won"), "ghost", ADMIN)
    assert codes(problems) == ["deal_closed", "unknown_stage"]


# -- status, approvals, probability --------------------------------------------------------------


def test_status_for():
    def p(code: str) -> Problem:
        return Problem(code=code, msg="x")

    assert status_for([p("skip_denied")]) == 409
    assert status_for([p("deal_closed"), p("approval_pending")]) == 409
    assert status_for([p("unknown_stage")]) == 409
    assert status_for([p("skip_denied"), p("missing_required_field")]) == 422
    assert status_for([p("validation_failed")]) == 422
    assert status_for([]) == 200


def test_needs_approval():
    approval = needs_approval(SPEC, "negotiation")
    assert approval is not None
    assert approval.approvers == ["alice", "bob"]
    assert approval.mode == "all"
    assert needs_approval(SPEC, "proposal") is None
    assert needs_approval(SPEC, "ghost") is None


def test_approval_outcome_any():
    base = pending(mode="any")
    assert approval_outcome(base) == "pending"
    assert (
        approval_outcome(base.model_copy(update={"decisions": [decision("bob", "approve")]}))
        == "approved"
    )
    assert (
        approval_outcome(base.model_copy(update={"decisions": [decision("bob", "reject")]}))
        == "rejected"
    )
    first_wins = [decision("alice", "approve", 1), decision("bob", "reject", 2)]
    assert approval_outcome(base.model_copy(update={"decisions": first_wins})) == "approved"
    reject_first = [decision("alice", "reject", 1), decision("bob", "approve", 2)]
    assert approval_outcome(base.model_copy(update={"decisions": reject_first})) == "rejected"


def test_approval_outcome_all():
    base = pending(mode="all")
    one = [decision("alice", "approve")]
    assert approval_outcome(base.model_copy(update={"decisions": one})) == "pending"
    both = [decision("alice", "approve"), decision("bob", "approve")]
    assert approval_outcome(base.model_copy(update={"decisions": both})) == "approved"
    veto = [decision("alice", "approve"), decision("bob", "reject")]
    assert approval_outcome(base.model_copy(update={"decisions": veto})) == "rejected"
    early_veto = [decision("bob", "reject")]
    assert approval_outcome(base.model_copy(update={"decisions": early_veto})) == "rejected"


def test_approval_ignores_strangers_and_second_decisions():
    base = pending(mode="all")
    strangers = [decision("mallory", "reject"), decision("alice", "approve")]
    assert approval_outcome(base.model_copy(update={"decisions": strangers})) == "pending"
    any_mode = pending(mode="any")
    assert approval_outcome(any_mode.model_copy(update={"decisions": strangers})) == "approved"
    # a second decision by the same approver does not change the first
    twice = [decision("alice", "approve"), decision("alice", "reject"), decision("bob", "approve")]
    assert approval_outcome(base.model_copy(update={"decisions": twice})) == "approved"
    repeated = [decision("alice", "approve"), decision("alice", "approve")]
    assert approval_outcome(base.model_copy(update={"decisions": repeated})) == "pending"


@pytest.mark.skipif(
    "escalated_to" not in PendingApproval.model_fields, reason="needs PendingApproval.escalated_to"
)
def test_escalation_approvers_decide_alone():
    escalated = pending(mode="all", escalated=True, escalated_to=["ceo", "alice"])
    ceo_yes = [decision("alice", "approve"), decision("ceo", "approve")]
    assert approval_outcome(escalated.model_copy(update={"decisions": ceo_yes})) == "approved"
    ceo_no = [decision("ceo", "reject"), decision("alice", "approve")]
    assert approval_outcome(escalated.model_copy(update={"decisions": ceo_no})) == "rejected"
    # alice is an approver too, so in "all" mode her approval alone is not enough
    only_alice = [decision("alice", "approve")]
    assert approval_outcome(escalated.model_copy(update={"decisions": only_alice})) == "pending"
    # before an escalation the escalation subjects are strangers
    not_yet = pending(mode="all")
    assert approval_outcome(not_yet.model_copy(update={"decisions": ceo_yes})) == "pending"


def test_probability_of():
    assert probability_of(SPEC, "qualified") == 30
    assert probability_of(SPEC, "won") == 100
    assert probability_of(SPEC, "ghost") is None


def test_permits():
    assert permits("allow", BOB)
    assert not permits("deny", BOB)
    assert permits("deny", ADMIN)
    assert permits(["bob"], BOB)
    assert not permits(["bob"], ALICE)
    assert not permits(["bob"], ENGINE)
