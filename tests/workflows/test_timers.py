"""Rotting and SLA timers of deal workflows on the time-skipping server."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from domain.calendar import add_business_time
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

pytestmark = pytest.mark.usefixtures("no_upserts")
DAY = timedelta(days=1)

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
