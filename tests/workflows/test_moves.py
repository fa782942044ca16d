"""Transitions and approvals through the deal workflow's updates (time-skipping server)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from domain.deal import Actor
from store.db import Database
from store.models import Approval
from tests.workflows.support import (
    create_pipeline,
    created,
    deal_row,
    eventually,
    history,
    new_id,
    send,
)
from workflows.deal import DealWorkflow
from workflows.messages import (
    DecisionReply,
    DecisionRequest,
    TransitionReply,
    TransitionRequest,
)

pytestmark = pytest.mark.usefixtures("no_upserts")
USER = Actor(subject="uma", role="viewer")

SPEC = {
    "stages": [
        {"key": "lead", "name": "Lead", "probability": 10},
        {"key": "qualified", "name": "Qualified", "probability": 30},
        {
            "key": "proposal",
            "name": "Proposal",
            "probability": 60,
            "required_fields": ["budget", "contact"],
            "validation": [{"expr": "value > `0`", "message": "a proposal needs a value"}],
        },
        {
            "key": "review",
            "name": "Review",
            "probability": 70,
            "approval": {
                "approvers": ["alice", "bob"],
                "mode": "all",
                "timeout": "P1D",
                "on_timeout": "escalate",
                "escalate_to": ["carol"],
            },
        },
        {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
        {"key": "lost", "name": "Lost", "probability": 0, "outcome": "lost"},
    ]
}


async def transition(
    handle: WorkflowHandle, to: str, actor: Actor = USER, **fields
) -> TransitionReply:  # type: ignore[no-untyped-def]
    return await handle.execute_update(
        "transition",
        TransitionRequest(to_stage=to, fields=fields, actor=actor),
        result_type=TransitionReply,
    )


async def decide(
    handle: WorkflowHandle, approval_id: str, subject: str, decision: str = "approve"
) -> DecisionReply:
    return await handle.execute_update(
        "decide",
        DecisionRequest(approval_id=approval_id, subject=subject, decision=decision),  # type: ignore[arg-type]
        result_type=DecisionReply,
    )


async def failure(coro) -> ApplicationError:  # type: ignore[no-untyped-def]
    with pytest.raises(WorkflowUpdateFailedError) as exc:
        await coro
    cause = exc.value.cause
    assert isinstance(cause, ApplicationError), cause
    return cause


def approval(db: Database, approval_id: str) -> Approval:
    with db.session() as session:
        row = session.get(Approval, approval_id)
        assert row is not None
        return row


async def test_a_refused_transition_lists_every_problem_and_changes_nothing(
    time_env: WorkflowEnvironment, db: Database, task_queue: str, run_worker
) -> None:
    client = time_env.client
    pipeline = create_pipeline(db, SPEC)
    deal = new_id("deal")
    async with run_worker(client, db):
        handle = await send(client, task_queue, deal, [created(deal, pipeline, value=0)])
        before_row = await eventually(lambda: deal_row(db, deal), "the deal")
        before_state = await handle.query("state")
        before_history = len(history(db, deal))

        cause = await failure(transition(handle, "proposal", budget=100))
        assert cause.type == "transition_refused"
        details = cause.details[0]
        assert details["status"] == 422
        codes = sorted(p["code"] for p in details["problems"])
        assert codes == ["missing_required_field", "skip_denied", "validation_failed"]
        assert [p["loc"] for p in details["problems"] if p["code"] == "missing_required_field"] == [
            ["fields", "contact"]
        ]

        assert await handle.query("state") == before_state
        after = deal_row(db, deal)
        assert (after.stage, after.revision, after.fields) == (
            before_row.stage,
            before_row.revision,
            before_row.fields,
        )
        assert len(history(db, deal)) == before_history

        # and a good move still goes through afterwards
        reply = await transition(handle, "qualified")
        assert reply.outcome == "moved"
        await eventually(lambda: deal_row(db, deal).stage == "qualified", "the move")


async def test_approval_all_mode_timeout_escalation_and_errors(
    time_env: WorkflowEnvironment, db: Database, task_queue: str, run_worker
) -> None:
    client = time_env.client
    pipeline = create_pipeline(db, SPEC)
    deal = new_id("deal")
    admin = Actor(subject="root", role="admin")
    async with run_worker(client, db):
        handle = await send(client, task_queue, deal, [created(deal, pipeline, stage="proposal")])
        await eventually(lambda: deal_row(db, deal), "the deal")

        reply = await transition(handle, "review", admin, discount=10)
        assert reply.outcome == "pending_approval" and reply.approval_id
        apr = reply.approval_id
        row = approval(db, apr)
        assert (row.status, row.approvers, row.mode) == ("pending", ["alice", "bob"], "all")
        assert deal_row(db, deal).stage == "proposal"
        assert deal_row(db, deal).pending_approval["approval_id"] == apr

        stranger = await failure(decide(handle, apr, "mallory"))
        assert stranger.type == "forbidden"  # 403 at the API
        assert (await decide(handle, apr, "alice")).outcome == "pending"
        twice = await failure(decide(handle, apr, "alice"))
        assert twice.type == "conflict"  # 409 at the API
        assert deal_row(db, deal).stage == "proposal"  # "all" needs bob too

        await time_env.sleep(timedelta(days=1, hours=1))
        await eventually(lambda: "carol" in approval(db, apr).approvers, "the escalation")
        [escalated] = history(db, deal, "approval_escalated")
        assert escalated.data["to"] == ["carol"]
        pending = deal_row(db, deal).pending_approval
        assert pending["escalated"] is True
        assert approval(db, apr).due_at == escalated.at + timedelta(days=1)

        reply2 = await decide(handle, apr, "carol")
        assert reply2.outcome == "approved"
        row = await eventually(
            lambda: deal_row(db, deal).stage == "review" and deal_row(db, deal), "moved"
        )
        assert row.fields["discount"] == 10
        assert row.pending_approval is None
        assert approval(db, apr).status == "approved"
        assert [d["subject"] for d in approval(db, apr).decisions] == ["alice", "carol"]

        late = await failure(decide(handle, apr, "bob"))
        assert late.type == "conflict"

    # the recorded history replays deterministically (updates, timers, activities)
    replayer = Replayer(workflows=[DealWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(await handle.fetch_history())


async def test_all_mode_needs_every_approver_and_withdrawal(
    time_env: WorkflowEnvironment, db: Database, task_queue: str, run_worker
) -> None:
    client = time_env.client
    pipeline = create_pipeline(db, SPEC)
    first, second = new_id("deal"), new_id("deal")
    admin = Actor(subject="root", role="admin")
    async with run_worker(client, db):
        h1 = await send(client, task_queue, first, [created(first, pipeline, stage="proposal")])
        h2 = await send(client, task_queue, second, [created(second, pipeline, stage="proposal")])
        await eventually(lambda: deal_row(db, first) and deal_row(db, second), "the deals")

        apr1 = (await transition(h1, "review", admin)).approval_id
        assert apr1 is not None
        assert (await decide(h1, apr1, "bob")).outcome == "pending"
        assert (await decide(h1, apr1, "alice")).outcome == "approved"
        await eventually(lambda: deal_row(db, first).stage == "review", "approved move")

        apr2 = (await transition(h2, "review", admin)).approval_id
        assert apr2 is not None
        assert (await transition(h2, "lost", admin)).outcome == "moved"
        row = await eventually(
            lambda: deal_row(db, second).status == "lost" and deal_row(db, second), "lost"
        )
        assert row.pending_approval is None
        assert approval(db, apr2).status == "withdrawn"
        # a closed deal's workflow completes; a late decision finds no workflow (409 at the API)
        assert await h2.result() == "lost"
        with pytest.raises(RPCError) as gone:
            await decide(h2, apr2, "alice")
        assert gone.value.status == RPCStatusCode.NOT_FOUND
