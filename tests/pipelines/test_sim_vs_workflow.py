"""The same script through ``POST /simulate`` and through a real deal workflow: same outcome.

The simulation runs over HTTP against the real API; the workflow runs on the Temporal dev
server with a real worker writing the read model to the same database. The script has no
waits (the dev server cannot skip time), so it compares moves, refusals and their reasons,
approvals (same ids), automations, the history the deal went through and its final state.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlmodel import col, select
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from dealflow.settings import Settings
from domain.deal import Actor
from domain.events import DealEvent
from store.db import Database
from store.models import Deal, DealHistory
from tests.pipelines.conftest import Api
from worker import build_worker
from workflows.messages import (
    DealInput,
    DecisionReply,
    DecisionRequest,
    EventBatch,
    TransitionReply,
    TransitionRequest,
)

PIPELINE = {
    "name": "Sim vs workflow",
    "type": "sales",
    "currency": "USD",
    "probability_mode": "stage",
    "stages": [
        {"key": "lead", "name": "Lead", "probability": 10, "sla": {"target": "P2D"}},
        {"key": "qualified", "name": "Qualified", "probability": 30, "required_fields": ["budget"]},
        {
            "key": "proposal",
            "name": "Proposal",
            "probability": 60,
            "approval": {"approvers": ["alice", "bob"], "mode": "all"},
        },
        {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
        {"key": "lost", "name": "Lost", "probability": 0, "outcome": "lost"},
    ],
    "rules": {"skip": "deny", "backward": "allow"},
    "automations": [
        {
            "name": "Mark qualified",
            "trigger": {"on": "stage_entered", "stage": "qualified"},
            "actions": [
                {"do": "set_field", "field": "qualified_by", "value": "automation"},
                {"do": "create_task", "template": "Call {title}"},
            ],
        }
    ],
}

REP = {"subject": "rep"}
STEPS: list[dict[str, Any]] = [
    {"do": "move", "to_stage": "proposal", "actor": REP},
    {"do": "move", "to_stage": "qualified", "actor": REP},
    {"do": "update", "fields": {"budget": 5000}},
    {"do": "move", "to_stage": "qualified", "actor": REP},
    {"do": "move", "to_stage": "proposal", "actor": REP, "fields": {"contact": "ana"}},
    {"do": "approve", "subject": "alice"},
    {"do": "approve", "subject": "bob"},
    {"do": "move", "to_stage": "won", "actor": REP},
]
IGNORED = {"action_planned", "action_run", "action_recorded", "action_failed"}


def _event(deal_id: str, type_: str, **data: Any) -> DealEvent:
    return DealEvent(
        event_id=f"evt_{uuid.uuid4().hex[:12]}",
        type=type_,  # type: ignore[arg-type]
        data={"deal_id": deal_id, **data},
        source_id="src_sim",
        received_at=datetime.now(UTC),
    )


async def _eventually(check: Any, what: str, tries: int = 600) -> Any:
    for _ in range(tries):
        result = await asyncio.to_thread(check)
        if result:
            return result
        await asyncio.sleep(0.025)
    raise AssertionError(f"gave up waiting for {what}")


def _history(db: Database, deal_id: str) -> list[DealHistory]:
    with db.session() as session:
        query = select(DealHistory).where(DealHistory.deal_id == deal_id)
        return list(session.exec(query.order_by(col(DealHistory.seq))).all())


async def _run_workflow(
    client: Any, db: Database, queue: str, pipeline_id: str, deal_id: str
) -> list[dict]:
    """Carry out STEPS on a real deal workflow; the outcome of each step, as the simulation's."""
    handle = await client.start_workflow(
        "DealWorkflow",
        DealInput(deal_id=deal_id),
        id=f"deal-{deal_id}",
        task_queue=queue,
        start_signal="events",
        start_signal_args=[
            EventBatch(
                events=[
                    _event(
                        deal_id,
                        "deal.created",
                        pipeline_id=pipeline_id,
                        title="Acme",
                        value=5000,
                        currency="USD",
                    )
                ]
            )
        ],
    )
    await _eventually(lambda: _history(db, deal_id), "the deal to be created")
    outcomes: list[dict] = []
    for step in STEPS:
        out: dict[str, Any] = {"do": step["do"], "problems": []}
        if step["do"] == "move":
            request = TransitionRequest(
                to_stage=step["to_stage"],
                fields=step.get("fields", {}),
                actor=Actor(**step["actor"]),
            )
            try:
                reply = await handle.execute_update(
                    "transition", request, result_type=TransitionReply
                )
            except WorkflowUpdateFailedError as exc:
                cause = exc.cause
                assert isinstance(cause, ApplicationError) and cause.type == "transition_refused", (
                    exc
                )
                out["outcome"] = "refused"
                out["problems"] = sorted(p["code"] for p in cause.details[0]["problems"])
            else:
                out["outcome"] = reply.outcome
                out["approval_id"] = reply.approval_id
        elif step["do"] == "update":
            seen = len(_history(db, deal_id))
            await handle.signal(
                "events",
                EventBatch(events=[_event(deal_id, "deal.updated", fields=step["fields"])]),
            )
            await _eventually(
                lambda seen=seen: any(
                    h.kind == "deal_updated" for h in _history(db, deal_id)[seen:]
                ),
                "the update to be applied",
            )
            out["outcome"] = "ok"
        else:
            reply = await handle.execute_update(
                "decide",
                DecisionRequest(
                    approval_id=outcomes[-1]["approval_id"],
                    subject=step["subject"],
                    decision=step["do"],
                ),
                result_type=DecisionReply,
            )
            out["approval_id"] = reply.approval_id
            out["outcome"] = {"approved": "moved", "pending": "pending_approval", "rejected": "ok"}[
                reply.outcome
            ]
        outcomes.append(out)
    assert await handle.result() == "won"
    return outcomes


async def test_the_simulation_and_a_real_workflow_agree(papi: Api, dev_env: Any, db: Database):
    created = await asyncio.to_thread(papi.create, PIPELINE)
    pipeline_id = created["id"]
    resp = await asyncio.to_thread(
        papi.call, "POST", f"/v1/pipelines/{pipeline_id}/activate", json={"test_mode": True}
    )
    assert resp.status_code == 200, resp.text
    deal_id = f"simwf-{uuid.uuid4().hex[:10]}"
    script = {
        "deal": {"deal_id": deal_id, "title": "Acme", "value": 5000, "currency": "USD"},
        "steps": STEPS,
    }
    resp = await asyncio.to_thread(
        papi.call, "POST", f"/v1/pipelines/{pipeline_id}/simulate", json=script
    )
    assert resp.status_code == 200, resp.text
    simulated = resp.json()

    queue = f"sim-vs-wf-{uuid.uuid4().hex[:8]}"
    async with build_worker(dev_env.client, db, Settings(task_queue=queue)):
        real = await _run_workflow(dev_env.client, db, queue, pipeline_id, deal_id)

    expected = [
        ("move", "refused", ["skip_denied"]),
        ("move", "refused", ["missing_required_field"]),
        ("update", "ok", []),
        ("move", "moved", []),
        ("move", "pending_approval", []),
        ("approve", "pending_approval", []),
        ("approve", "moved", []),
        ("move", "moved", []),
    ]
    sim_steps = [
        (s["do"], s["outcome"], sorted(p["code"] for p in s["problems"]))
        for s in simulated["steps"]
    ]
    real_steps = [(s["do"], s["outcome"], s["problems"]) for s in real]
    assert sim_steps == expected
    assert real_steps == expected
    sim_approvals = [s.get("approval_id") for s in simulated["steps"]]
    real_approvals = [s.get("approval_id") for s in real]
    assert sim_approvals[4] and sim_approvals[4:7] == real_approvals[4:7]

    sim_kinds = [e["kind"] for e in simulated["timeline"] if e["kind"] not in IGNORED]
    real_history = await asyncio.to_thread(_history, db, deal_id)
    real_kinds = [h.kind for h in real_history if h.kind not in IGNORED]
    assert real_kinds == sim_kinds
    assert [h.data for h in real_history if h.kind == "stage_changed"] == [
        e["data"] for e in simulated["timeline"] if e["kind"] == "stage_changed"
    ]
    sim_effects = [
        e["data"]["effect"] for e in simulated["timeline"] if e["kind"] == "action_planned"
    ]
    real_effects = [h.data["effect"] for h in real_history if h.kind in IGNORED]
    assert sorted(sim_effects) == sorted(real_effects)

    with db.session() as session:
        row = session.get(Deal, deal_id)
    assert row is not None
    final = simulated["final"]
    assert (row.stage, row.status, row.fields, row.owner, row.is_rotting, row.pending_approval) == (
        final["stage"],
        final["status"],
        final["fields"],
        final["owner"],
        final["is_rotting"],
        final["pending_approval"],
    )
    assert final["fields"] == {"budget": 5000, "qualified_by": "automation", "contact": "ana"}
