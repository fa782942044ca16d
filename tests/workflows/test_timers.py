"""Rotting and SLA timers of deal workflows on the time-skipping server."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from domain.calendar import add_business_time
from domain.deal import Actor
from domain.pipeline import BusinessCalendar
from store.db import Database
from tests.workflows.support import (
    create_pipeline,
    created,
    deal_row,
    event,
    eventually,
    history,
    new_id,
    send,
)
from workflows.messages import SnoozeRequest

pytestmark = pytest.mark.usefixtures("no_upserts")
DAY = timedelta(days=1)
ADMIN = Actor(subject="root", role="admin")

ROTTING = {
    "stages": [
        {"key": "lead", "name": "Lead", "probability": 10, "rotting": "P14D"},
        {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
    ]
}


async def test_rotting_timeline_across_days(
    time_env: WorkflowEnvironment, db: Database, task_queue: str, run_worker
) -> None:
    client = time_env.client
    pipeline = create_pipeline(db, ROTTING)
    idle, busy = new_id("idle"), new_id("busy")
    async with run_worker(client, db):
        for deal in (idle, busy):
            await send(client, task_queue, deal, [created(deal, pipeline)])
        await eventually(lambda: deal_row(db, idle) and deal_row(db, busy), "both deals")

        await time_env.sleep(10 * DAY)
        await send(client, task_queue, busy, [event(busy, "deal.activity", kind="call")])
        await eventually(lambda: history(db, busy, "activity"), "the activity recorded")

        await time_env.sleep(3 * DAY)  # day 13
        assert not deal_row(db, idle).is_rotting
        assert not deal_row(db, busy).is_rotting
        assert history(db, idle, "rotting") == []

        await time_env.sleep(2 * DAY)  # day 15
        await eventually(lambda: deal_row(db, idle).is_rotting, "the idle deal rotting")
        assert not deal_row(db, busy).is_rotting  # its clock restarted on day 10

        await time_env.sleep(DAY * 8 + timedelta(hours=20))  # day 23, 20 h
        assert not deal_row(db, busy).is_rotting
        await time_env.sleep(timedelta(hours=6))  # day 24, 2 h
        await eventually(lambda: deal_row(db, busy).is_rotting, "the busy deal rotting")

        # notified once: one rotting entry, one notification, however long it stays rotting
        [rotting] = history(db, idle, "rotting")
        notified = [
            h
            for h in history(db, idle, "action_run")
            if h.data["effect"] == "notify" and "logged" in (h.data["detail"] or "")
        ]
        assert len(notified) == 1
        assert deal_row(db, idle).is_rotting
        entered = deal_row(db, idle).stage_entered_at
        assert entered + 14 * DAY <= rotting.at < entered + 15 * DAY
        [busy_rot] = history(db, busy, "rotting")
        [activity] = history(db, busy, "activity")
        assert busy_rot.data["since"] == (activity.at + 14 * DAY).isoformat()


CALENDAR = {"timezone": "UTC", "weekdays": [0, 1, 2, 3, 4, 5, 6], "start": "09:00", "end": "17:00"}


@pytest.mark.parametrize("calendar", [None, CALENDAR], ids=["wall-clock", "business-hours"])
async def test_sla_warning_and_breach_at_their_instants(
    time_env: WorkflowEnvironment,
    db: Database,
    task_queue: str,
    run_worker,
    calendar: dict | None,
) -> None:
    spec = {
        "stages": [
            {
                "key": "lead",
                "name": "Lead",
                "probability": 10,
                "sla": {"target": "PT10H", "warn_at": 0.5},
            },
            {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
        ],
        "calendar": calendar,
    }
    client = time_env.client
    pipeline = create_pipeline(db, spec)
    deal = new_id("sla")
    async with run_worker(client, db):
        await send(client, task_queue, deal, [created(deal, pipeline)])
        row = await eventually(lambda: deal_row(db, deal), "the deal")
        entered = row.stage_entered_at
        cal = BusinessCalendar.model_validate(calendar) if calendar else None
        warn_at = add_business_time(entered, timedelta(hours=5), cal)
        due_at = add_business_time(entered, timedelta(hours=10), cal)
        assert datetime.fromisoformat(row.sla["due_at"]) == due_at
        if calendar:
            assert due_at - entered >= timedelta(hours=26)  # the nights do not count

        async def sleep_until(moment) -> None:  # type: ignore[no-untyped-def]
            now = await time_env.get_current_time()
            await time_env.sleep(moment - now)

        minute = timedelta(minutes=1)
        await sleep_until(warn_at - minute)
        assert deal_row(db, deal).sla["state"] == "ok"
        await sleep_until(warn_at + minute)
        await eventually(lambda: deal_row(db, deal).sla["state"] == "warning", "warning")
        await sleep_until(due_at - minute)
        assert deal_row(db, deal).sla["state"] == "warning"
        await sleep_until(due_at + minute)
        await eventually(lambda: deal_row(db, deal).sla["state"] == "breached", "breach")

        [warning] = history(db, deal, "sla_warning")
        [breach] = history(db, deal, "sla_breached")
        assert warn_at <= warning.at < warn_at + minute
        assert due_at <= breach.at < due_at + minute
        notes = [h.data["detail"] for h in history(db, deal, "action_run")]
        assert len(notes) == 1  # the breach notification


async def test_snooze_holds_rotting_until_its_date(
    time_env: WorkflowEnvironment, db: Database, task_queue: str, run_worker
) -> None:
    client = time_env.client
    pipeline = create_pipeline(db, ROTTING)
    deal = new_id("snz")
    async with run_worker(client, db):
        handle = await send(client, task_queue, deal, [created(deal, pipeline)])
        await eventually(lambda: deal_row(db, deal), "the deal")
        await time_env.sleep(15 * DAY)
        await eventually(lambda: deal_row(db, deal).is_rotting, "rotting")

        now = await time_env.get_current_time()
        with pytest.raises(WorkflowUpdateFailedError) as past:
            await handle.execute_update(
                "snooze", SnoozeRequest(until=now - DAY, actor=ADMIN), result_type=int
            )
        assert isinstance(past.value.cause, ApplicationError)
        assert past.value.cause.type == "invalid"

        until = now + 5 * DAY
        await handle.execute_update(
            "snooze", SnoozeRequest(until=until, actor=ADMIN), result_type=int
        )
        assert not deal_row(db, deal).is_rotting
        await time_env.sleep(4 * DAY)
        assert not deal_row(db, deal).is_rotting
        await time_env.sleep(DAY + timedelta(hours=1))
        await eventually(lambda: deal_row(db, deal).is_rotting, "rotting again")
        assert len(history(db, deal, "rotting")) == 2
        [snoozed] = history(db, deal, "rotting_snoozed")
        assert datetime.fromisoformat(snoozed.data["until"]) == until


async def test_time_in_stage_automation_fires_once(
    time_env: WorkflowEnvironment, db: Database, task_queue: str, run_worker
) -> None:
    spec = {
        **ROTTING,
        "automations": [
            {
                "name": "nudge",
                "trigger": {"on": "time_in_stage", "stage": "lead", "after": "P3D"},
                "actions": [
                    {"do": "set_field", "field": "nudged", "value": True},
                    {"do": "create_task", "template": "Nudge {title}"},
                ],
            }
        ],
    }
    client = time_env.client
    pipeline = create_pipeline(db, spec)
    deal = new_id("tis")
    async with run_worker(client, db):
        await send(client, task_queue, deal, [created(deal, pipeline)])
        await eventually(lambda: deal_row(db, deal), "the deal")
        await time_env.sleep(2 * DAY)
        assert "nudged" not in deal_row(db, deal).fields
        await time_env.sleep(2 * DAY)
        await eventually(lambda: deal_row(db, deal).fields.get("nudged"), "the nudge")
        await time_env.sleep(5 * DAY)
    [ran] = history(db, deal, "automation_ran")
    assert ran.data == {"automation": "nudge", "on": "time_in_stage"}
    entered = deal_row(db, deal).stage_entered_at
    assert entered + 3 * DAY <= ran.at < entered + 3 * DAY + timedelta(minutes=1)
