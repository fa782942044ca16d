"""Automations' side effects from a running deal workflow: e-mail over a local SMTP server,
tasks from templates, integration calls, and test mode (recorded, not executed)."""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message

import pytest
from aiosmtpd.controller import Controller
from sqlmodel import select
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from domain.deal import Actor
from store.db import Database
from store.models import Task
from tests.conftest import free_port
from tests.workflows.support import (
    HttpRecorder,
    create_pipeline,
    created,
    deal_row,
    eventually,
    history,
    new_id,
    send,
)
from workflows.messages import TransitionReply, TransitionRequest

pytestmark = pytest.mark.usefixtures("no_upserts")


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Controller, Mailbox]]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, box
    controller.stop()


def spec() -> dict:
    return {
        "stages": [
            {"key": "lead", "name": "Lead", "probability": 10},
            {"key": "qualified", "name": "Qualified", "probability": 30},
            {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
        ],
        "automations": [
            {
                "name": "tell the boss",
                "trigger": {"on": "stage_entered", "stage": "qualified"},
                "actions": [
                    {
                        "do": "notify",
                        "channel": "email",
                        "to": ["boss@example.com", "cfo@example.com"],
                        "template": "Deal {title} ({value:,.0f} {currency}) is now {stage}",
                    },
                    {"do": "create_task", "template": "Call {title} back", "due_in": "P2D"},
                    {"do": "call_integration", "integration": "crm", "payload": {"kind": "q"}},
                ],
            }
        ],
    }


async def qualify(client, task_queue: str, db: Database, pipeline: str) -> str:  # type: ignore[no-untyped-def]
    deal = new_id("deal")
    handle = await send(client, task_queue, deal, [created(deal, pipeline, value=12500)])
    await eventually(lambda: deal_row(db, deal), "the deal")
    reply = await handle.execute_update(
        "transition",
        TransitionRequest(to_stage="qualified", actor=Actor(subject="uma")),
        result_type=TransitionReply,
    )
    assert reply.outcome == "moved"
    return deal


def tasks(db: Database, deal: str) -> list[Task]:
    with db.session() as session:
        return list(session.exec(select(Task).where(Task.deal_id == deal)).all())


@pytest.mark.parametrize("test_mode", [False, True], ids=["live", "test-mode"])
async def test_email_task_and_integration_from_an_automation(
    time_env: WorkflowEnvironment,
    db: Database,
    task_queue: str,
    run_worker,
    smtp: tuple[Controller, Mailbox],
    test_mode: bool,
) -> None:
    controller, box = smtp
    client = time_env.client
    pipeline = create_pipeline(db, spec(), test_mode=test_mode)
    with HttpRecorder() as crm:
        settings = {
            "smtp_host": controller.hostname,
            "smtp_port": controller.port,
            "integrations": {"crm": crm.url},
        }
        async with run_worker(client, db, **settings):
            deal = await qualify(client, task_queue, db, pipeline)
            done = await eventually(
                lambda: (
                    len(
                        [
                            h
                            for h in history(db, deal)
                            if h.kind in ("action_run", "action_recorded", "action_failed")
                        ]
                    )
                    == 3
                    and history(db, deal)
                ),
                "three actions",
            )

    actions = {h.data["effect"]: h for h in done if h.kind.startswith("action_")}
    assert set(actions) == {"notify", "create_task", "call_integration"}
    assert actions["create_task"].kind == "action_run"  # tasks stay inside dealflow
    [task] = tasks(db, deal)
    assert task.title == "Call Acme back"
    assert task.status == "open"
    [moved] = [h for h in done if h.kind == "stage_changed"]
    assert task.due_at is not None and abs((task.due_at - moved.at).total_seconds() - 172800) < 1

    if test_mode:
        assert actions["notify"].kind == "action_recorded"
        assert actions["call_integration"].kind == "action_recorded"
        assert actions["notify"].data["test_mode"] is True
        assert box.messages == []
        assert crm.received == []
        return

    assert actions["notify"].kind == "action_run"
    assert actions["call_integration"].kind == "action_run"
    [mail] = box.messages
    assert mail["To"] == "boss@example.com, cfo@example.com"
    assert mail["Subject"].startswith("[dealflow]")
    assert mail.get_payload().strip() == "Deal Acme (12,500 USD) is now qualified"
    [call] = crm.received
    headers = {k.lower(): v for k, v in call["headers"].items()}
    assert headers["idempotency-key"].startswith(f"{deal}:")
    assert call["body"]["kind"] == "q"
    assert call["body"]["deal"]["deal_id"] == deal
    assert call["body"]["deal"]["stage"] == "qualified"


async def test_a_failing_action_is_recorded_and_the_deal_goes_on(
    time_env: WorkflowEnvironment, db: Database, task_queue: str, run_worker
) -> None:
    """No SMTP host configured: the e-mail fails for good, the rest still runs."""
    client = time_env.client
    pipeline = create_pipeline(db, spec())
    with HttpRecorder() as crm:
        async with run_worker(client, db, integrations={"crm": crm.url}):
            deal = await qualify(client, task_queue, db, pipeline)
            failed = await eventually(lambda: history(db, deal, "action_failed"), "the failure")
            await eventually(lambda: len(history(db, deal, "action_run")) == 2, "the others")
    assert failed[0].data["effect"] == "notify"
    assert "SMTP" in failed[0].data["error"]
    assert len(crm.received) == 1
    assert deal_row(db, deal).stage == "qualified"


async def test_a_retrying_action_does_not_hold_up_the_deal(
    time_env: WorkflowEnvironment, db: Database, task_queue: str, run_worker
) -> None:
    """The CRM answers 503: the call is retried with one idempotency key, and meanwhile the
    deal takes further moves (effects run in the background, not under the deal's lock)."""
    client = time_env.client
    pipeline = create_pipeline(db, spec())
    with HttpRecorder(status=503) as crm:
        async with run_worker(client, db, integrations={"crm": crm.url}):
            deal = await qualify(client, task_queue, db, pipeline)
            await eventually(lambda: len(crm.received) >= 2, "a retry")
            handle = client.get_workflow_handle(f"deal-{deal}")
            reply = await handle.execute_update(
                "transition",
                TransitionRequest(to_stage="won", actor=Actor(subject="uma")),
                result_type=TransitionReply,
            )
            assert reply.outcome == "moved"
            row = await eventually(
                lambda: deal_row(db, deal).status == "won" and deal_row(db, deal), "won"
            )
            assert row.stage == "won"
            calls = [h for h in history(db, deal) if h.data.get("effect") == "call_integration"]
            assert calls == []  # still retrying: nothing recorded for it yet
            description = await handle.describe()
            assert description.status == WorkflowExecutionStatus.RUNNING  # waits for the effect
    assert len({c["headers"]["Idempotency-Key"] for c in crm.received}) == 1
