"""The circuit breaker: shared in the database, opens after N failures in a window, lets one
probe through after the cool-down, closes on success; open calls never reach the endpoint."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.integrations import Breaker, CircuitOpen
from dealflow.settings import Settings
from store.db import Database
from tests.processing.support import (
    activity_runs,
    created,
    event,
    integration_pipeline,
    new_id,
    store_events,
)
from tests.workflows.support import eventually, history, send


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def settings(**kw: object) -> Settings:
    base = {"breaker_failure_threshold": 3, "breaker_window": "PT1M", "breaker_cooldown": "PT30S"}
    return Settings(_env_file=None, **{**base, **kw})  # type: ignore[arg-type]


def test_breaker_opens_probes_and_closes(db: Database) -> None:
    clock = Clock()
    one, other = Breaker(db, settings(), clock=clock), Breaker(db, settings(), clock=clock)
    name = f"crm-{uuid.uuid4().hex[:6]}"
    for _ in range(2):
        one.admit(name)
        one.failure(name, "answered 503")
    assert other.state(name) == "closed"
    other.admit(name)
    other.failure(name, "answered 503")  # the third, from another worker: open
    assert one.state(name) == "open"
    with pytest.raises(CircuitOpen) as raised:
        one.admit(name)
    assert raised.value.type == "circuit_open"
    assert raised.value.next_retry_delay == timedelta(seconds=30)
    clock.now += timedelta(seconds=10)
    with pytest.raises(CircuitOpen) as raised:
        other.admit(name)
    assert raised.value.next_retry_delay == timedelta(seconds=20)
    # Cool-down over: exactly one probe.
    clock.now += timedelta(seconds=21)
    assert one.admit(name).probe is True
    assert one.state(name) == "half_open"
    with pytest.raises(CircuitOpen):
        other.admit(name)
    one.failure(name, "answered 503")  # the probe failed: open again, for a new cool-down
    assert one.state(name) == "open"
    with pytest.raises(CircuitOpen):
        other.admit(name)
    clock.now += timedelta(seconds=31)
    assert other.admit(name).probe is True
    other.success(name)
    assert one.state(name) == "closed"
    assert one.admit(name).probe is False


def test_failures_outside_the_window_do_not_open_it(db: Database) -> None:
    clock = Clock()
    breaker = Breaker(db, settings(), clock=clock)
    name = f"crm-{uuid.uuid4().hex[:6]}"
    for _ in range(5):
        breaker.failure(name, "answered 503")
        clock.now += timedelta(seconds=40)  # two failures at most in any one-minute window
    assert breaker.state(name) == "closed"


async def _failed_fast(handles) -> bool:  # type: ignore[no-untyped-def]
    """Some pending integration call's last attempt failed on the open circuit."""
    for handle in handles:
        desc = await handle.describe()
        for pending in desc.raw_description.pending_activities:
            if "circuit" in pending.last_failure.message:
                return True
    return False


async def test_a_flapping_integration_opens_the_breaker_then_closes(
    dev_env: WorkflowEnvironment, db: Database, run_worker, fake_integration
) -> None:
    client = dev_env.client
    with fake_integration(status=503) as crm:
        async with run_worker(
            client,
            db,
            integrations={"crm": crm.url},
            breaker_failure_threshold=3,
            breaker_cooldown="PT1S",
        ) as config:
            breaker = Breaker(db, config)
            endpoint = f"crm {crm.url}"
            pipeline = integration_pipeline(db)
            handles, deals = [], []
            for _ in range(6):
                deal = new_id("deal")
                events = [
                    created(deal, pipeline),
                    event(deal, "deal.stage_change_requested", to_stage="qualified"),
                ]
                store_events(db, events)
                handles.append(await send(client, config.task_queue, deal, events))
                deals.append(deal)
            await eventually(lambda: breaker.state(endpoint) != "closed", "the breaker opens")
            for _ in range(400):
                if await _failed_fast(handles):
                    break
                await asyncio.sleep(0.025)
            else:
                raise AssertionError("no call failed fast on the open circuit")
            crm.answer(200)  # the integration recovers
            for deal in deals:
                await eventually(lambda d=deal: history(db, d, "action_run"), deal, tries=2000)
            runs = [r for h in handles for r in await activity_runs(h, "run_effect")]
            assert breaker.state(endpoint) == "closed"
    assert all(r["outcome"] == "completed" for r in runs)
    attempts = sum(r["attempt"] for r in runs)
    # Every call succeeded in the end, but attempts on the open circuit never left the worker.
    assert crm.hits < attempts
    assert sum(1 for r in crm.received if r["status"] == 200) == len(deals)
