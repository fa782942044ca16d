"""The circuit breaker: shared in the database, opens after N failures in a window, lets one
probe through after the cool-down, closes on success; open calls never reach the endpoint."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.integrations import INTEGRATION_RETRY, Breaker, CircuitOpen
from dealflow.settings import Settings
from store.db import Database
from tests.conftest import _binary
from tests.processing.support import (
    activity_runs,
    created,
    event,
    integration_pipeline,
    new_id,
    store_events,
)
from tests.workflows.support import eventually, history, send
from workflows.deal import DealWorkflow
from workflows.messages import EventBatch
from workflows.search import SEARCH_ATTRIBUTES


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
    assert raised.value.non_retryable, "an open circuit spends no attempt: the workflow waits"
    assert raised.value.info.delay == timedelta(seconds=30)
    assert raised.value.details == (
        {"delay_seconds": 30.0, "fallback": "wait", "max_wait_seconds": 86400.0},
    )
    clock.now += timedelta(seconds=10)
    with pytest.raises(CircuitOpen) as raised:
        other.admit(name)
    assert raised.value.info.delay == timedelta(seconds=20)
    # Cool-down over: exactly one probe.
    clock.now += timedelta(seconds=21)
    assert one.admit(name).probe is True
    assert one.state(name) == "half_open"
    with pytest.raises(CircuitOpen) as raised:
        other.admit(name)  # lost the race: a short delay
    assert raised.value.info.delay == timedelta(seconds=2)
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
    """Some integration call failed on the open circuit without leaving the worker."""
    for handle in handles:
        for run in await activity_runs(handle, "run_effect"):
            if run["outcome"] == "failed" and "is open;" in run["failure"].message:
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
            per_deal = [await activity_runs(h, "run_effect") for h in handles]
            assert breaker.state(endpoint) == "closed"
    runs = [r for deal_runs in per_deal for r in deal_runs]
    # Every call succeeded in the end; each run before that ended on the open circuit (not
    # retryable: it spent no attempt), and the deal ran the call again after a timer.
    assert all(deal_runs[-1]["outcome"] == "completed" for deal_runs in per_deal)
    for run in (r for deal_runs in per_deal for r in deal_runs[:-1]):
        assert run["outcome"] == "failed"
        assert run["failure"].application_failure_info.type == "circuit_open"
        assert run["failure"].application_failure_info.non_retryable
    assert not any(history(db, deal, "action_failed") for deal in deals)
    # Attempts on the open circuit never left the worker.
    assert crm.hits < sum(r["attempt"] for r in runs)
    assert sum(1 for r in crm.received if r["status"] == 200) == len(deals)


# --------------------------------------------------------------------------- waiting it out


async def _effect_timeline(handle: WorkflowHandle) -> tuple[list[str], list[timedelta]]:
    """The deal's integration call in history order: ``run`` for each ``run_effect`` scheduled,
    ``wait`` for each fired timer slept on an open circuit; and those timers' durations."""
    events = (await handle.fetch_history()).events
    circuit: dict[str, timedelta] = {}
    timeline: list[str] = []
    for ev in events:
        if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            if ev.activity_task_scheduled_event_attributes.activity_type.name == "run_effect":
                timeline.append("run")
        elif ev.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            if b"circuit of integration" in ev.user_metadata.summary.data:
                attrs = ev.timer_started_event_attributes
                circuit[attrs.timer_id] = attrs.start_to_fire_timeout.ToTimedelta()
        elif ev.event_type == EventType.EVENT_TYPE_TIMER_FIRED:
            if ev.timer_fired_event_attributes.timer_id in circuit:
                timeline.append("wait")
    return timeline, list(circuit.values())


async def _replays(handle: WorkflowHandle) -> None:
    """The recorded history replays deterministically (timers, markers, activities)."""
    replayer = Replayer(workflows=[DealWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(await handle.fetch_history())


async def _until(check: Callable[[], Awaitable[bool]], what: str, tries: int = 800) -> None:
    for _ in range(tries):
        if await check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"gave up waiting for {what}")


def _circuit_failures(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs that ended on the open circuit: not retryable, so they spent no further attempt."""
    found = []
    for run in runs:
        info = run.get("failure") and run["failure"].application_failure_info
        if info and info.type == "circuit_open" and info.non_retryable:
            found.append(run)
    return found


async def _qualify(client: Client, config: Settings, db: Database, integration: str):  # type: ignore[no-untyped-def]
    """A deal whose move to ``qualified`` calls ``integration``."""
    deal = new_id("deal")
    events = [
        created(deal, integration_pipeline(db, integration)),
        event(deal, "deal.stage_change_requested", to_stage="qualified"),
    ]
    store_events(db, events)
    return deal, await send(client, config.task_queue, deal, events)


def _open_breaker(db: Database, config: Settings, endpoint: str) -> None:
    """As if other workers' calls had failed just now: the breaker is open before the deal."""
    breaker = Breaker(db, config)
    for _ in range(config.breaker_failure_threshold):
        breaker.failure(endpoint, "answered 503")
    assert breaker.state(endpoint) == "open"


async def test_while_the_circuit_is_open_the_call_waits_on_timers_then_succeeds(
    dev_env: WorkflowEnvironment, db: Database, run_worker, fake_integration
) -> None:
    client = dev_env.client
    name = new_id("crm")  # a breaker of its own
    with fake_integration(status=503) as crm:
        async with run_worker(
            client,
            db,
            integrations={name: crm.url},
            breaker_failure_threshold=2,
            breaker_cooldown="PT1S",
        ) as config:
            deal, handle = await _qualify(client, config, db, name)

            async def waited_three_times() -> bool:
                return (await _effect_timeline(handle))[0].count("wait") >= 3

            # Down for several cool-downs: the call is waiting, not failed.
            await _until(waited_three_times, "three waits on the open circuit")
            assert not history(db, deal, "action_failed")
            # The deal's history says why (once, however long it waits).
            [waiting] = await eventually(
                lambda: history(db, deal, "action_waiting"), "the waiting entry"
            )
            assert waiting.data["integration"] == name
            assert "circuit" in waiting.data["reason"]
            assert Breaker(db, config).state(f"{name} {crm.url}") != "closed"
            crm.answer(200)  # the integration recovers
            [ran] = await eventually(lambda: history(db, deal, "action_run"), "the call", 800)
            runs = await activity_runs(handle, "run_effect")
            timeline, timers = await _effect_timeline(handle)
            assert Breaker(db, config).state(f"{name} {crm.url}") == "closed"
            await _replays(handle)
    assert not history(db, deal, "action_failed")
    assert ran.data["detail"] == f"{name} answered 200"
    assert len(history(db, deal, "action_waiting")) == 1
    assert history(db, deal, "action_waiting")[0].seq < ran.seq
    # Run, wait, run, wait, ..., run: a durable timer between every two runs of the activity.
    assert timeline == ["run", "wait"] * (len(runs) - 1) + ["run"]
    assert len(runs) >= 4
    assert all(t <= config.breaker_cooldown for t in timers)
    # Every run but the last ended on the open circuit; only the first spent retries (while the
    # breaker was still closed, within the policy); none after it a second attempt.
    assert _circuit_failures(runs) == runs[:-1]
    assert runs[-1]["outcome"] == "completed"
    assert runs[0]["attempt"] <= INTEGRATION_RETRY.maximum_attempts
    assert [r["attempt"] for r in runs[1:]] == [1] * (len(runs) - 1)
    # One idempotency key, the effect's, on every call the integration saw.
    keys = {r["headers"]["Idempotency-Key"] for r in crm.received}
    assert len(keys) == 1 and keys.pop().startswith(f"{deal}:")
    assert [r["status"] for r in crm.received].count(200) == 1


async def _fails_on_an_open_circuit(  # type: ignore[no-untyped-def]
    client: Client, db: Database, run_worker, crm, name: str, **settings: Any
) -> tuple[Any, str, list[dict[str, Any]], list[str], list[timedelta]]:
    """With the breaker of ``name`` open, qualify a deal (its automation calls ``name``) and
    wait for the call to be recorded failed: (that entry, the deal, the runs of
    ``run_effect``, the effect's timeline, its timers)."""
    async with run_worker(
        client, db, integrations={name: crm.url}, breaker_failure_threshold=2, **settings
    ) as config:
        _open_breaker(db, config, f"{name} {crm.url}")
        deal, handle = await _qualify(client, config, db, name)
        [failed] = await eventually(lambda: history(db, deal, "action_failed"), "failure")
        runs = await activity_runs(handle, "run_effect")
        timeline, timers = await _effect_timeline(handle)
    return failed, deal, runs, timeline, timers


async def test_with_fallback_fail_an_open_circuit_fails_the_call_at_once(
    dev_env: WorkflowEnvironment, db: Database, run_worker, fake_integration
) -> None:
    name = new_id("crm")
    with fake_integration(status=200) as crm:
        failed, deal, runs, timeline, _ = await _fails_on_an_open_circuit(
            dev_env.client,
            db,
            run_worker,
            crm,
            name,
            breaker_cooldown="PT1M",
            breaker_fallback="fail",
        )
    assert failed.data["error"] == (
        f"circuit of integration '{name}' open; failed without waiting "
        "(DEALFLOW_BREAKER_FALLBACK=fail)"
    )
    assert failed.data["effect"] == "call_integration"
    assert timeline == ["run"] and runs[0]["attempt"] == 1
    assert _circuit_failures(runs) == runs
    assert crm.hits == 0, "the call never left the worker"
    assert not history(db, deal, "action_run")


async def test_a_call_that_waits_past_the_maximum_is_recorded_failed(
    dev_env: WorkflowEnvironment, db: Database, run_worker, fake_integration
) -> None:
    name = new_id("crm")
    with fake_integration(status=503) as crm:  # down for longer than the wait
        failed, deal, runs, timeline, timers = await _fails_on_an_open_circuit(
            dev_env.client,
            db,
            run_worker,
            crm,
            name,
            breaker_cooldown="PT1S",
            breaker_max_wait="PT2S",
        )
    assert failed.data["error"] == (
        f"circuit of integration '{name}' open; gave up after waiting PT2S "
        "(DEALFLOW_BREAKER_MAX_WAIT=PT2S)"
    )
    # The timers add up to the maximum (the last one is cut to what was left of it); timers
    # travel as float seconds, hence the microsecond or so.
    assert abs(sum(timers, timedelta(0)) - timedelta(seconds=2)) < timedelta(milliseconds=1)
    assert timeline == ["run", "wait"] * len(timers) + ["run"]
    assert _circuit_failures(runs) == runs
    assert all(r["attempt"] == 1 for r in runs)
    assert not history(db, deal, "action_run")
    assert len({r["headers"]["Idempotency-Key"] for r in crm.received}) <= 1


# --------------------------------------------------------------------------- continue-as-new


@pytest.fixture(scope="module")
async def short_history_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server of this module's own that suggests continue-as-new after a few events."""
    extra = ["--dynamic-config-value", f"limit.historyCount.suggestContinueAsNew={SUGGEST_AT}"]
    for attribute, kind in SEARCH_ATTRIBUTES.items():
        extra += ["--search-attribute", f"{attribute}={kind}"]
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=_binary("temporal"),
        dev_server_extra_args=extra,
        ui=False,
    )
    yield env
    await env.shutdown()


SUGGEST_AT = 60


async def test_a_waiting_call_is_carried_across_continue_as_new(
    short_history_env: WorkflowEnvironment, sqlite_db: Database, run_worker, fake_integration
) -> None:
    """A long wait does not hold up continue-as-new: the sleeping call is carried to the next
    run, which sleeps it out and calls again, under the same key, while events go on."""
    client, db = short_history_env.client, sqlite_db
    name = new_id("crm")
    with fake_integration(status=503) as crm:
        async with run_worker(
            client,
            db,
            integrations={name: crm.url},
            breaker_failure_threshold=2,
            breaker_cooldown="PT1S",
        ) as config:
            deal, handle = await _qualify(client, config, db, name)
            workflow_id = f"deal-{deal}"

            async def carried() -> bool:
                # Events keep coming (and are applied) while the call waits on the circuit.
                await handle.signal(
                    "events", EventBatch(events=[event(deal, "deal.activity", kind="call")])
                )
                runs = [wf async for wf in client.list_workflows(f'WorkflowId="{workflow_id}"')]
                return len(runs) >= 3

            await _until(carried, "two continue-as-new while the call waits", tries=400)
            assert not history(db, deal, "action_failed")
            assert not history(db, deal, "action_run")
            crm.answer(200)
            await eventually(lambda: history(db, deal, "action_run"), "the call", 800)
            runs = [wf async for wf in client.list_workflows(f'WorkflowId="{workflow_id}"')]
            carried_inputs, effect_runs = [], []
            for wf in runs:
                run = client.get_workflow_handle(workflow_id, run_id=wf.run_id)
                effect_runs += await activity_runs(run, "run_effect")
                await _replays(run)
                for ev in (await run.fetch_history()).events:
                    if ev.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                        attrs = ev.workflow_execution_continued_as_new_event_attributes
                        carried_inputs.append(json.loads(attrs.input.payloads[0].data))
    assert len(history(db, deal, "action_run")) == 1
    assert not history(db, deal, "action_failed")
    assert history(db, deal, "activity"), "events were applied while the call waited"
    # Some run handed the sleeping call over, with what it had waited so far.
    handed = [w for inp in carried_inputs for w in inp["waiting_effects"]]
    assert handed and {w["effect"]["kind"] for w in handed} == {"call_integration"}
    assert len({w["effect"]["key"] for w in handed}) == 1
    assert [r["outcome"] for r in effect_runs].count("completed") == 1
    assert len({r["headers"]["Idempotency-Key"] for r in crm.received}) == 1


# --------------------------------------------------------------------------- replay


HISTORIES = Path(__file__).parent / "histories"


async def test_a_history_recorded_before_the_wait_still_replays() -> None:
    """``circuit_open_before_wait.json`` was recorded by the deal workflow as it was before the
    ``circuit-wait`` patch (its ``run_effect`` failed on an open circuit, and that code recorded
    ``action_failed`` at once): today's code must replay it as it ran, not wait."""
    text = (HISTORIES / "circuit_open_before_wait.json").read_text()
    recorded = WorkflowHistory.from_json("deal-deal_recorded_old", text)
    [failed] = [
        e.activity_task_failed_event_attributes.failure
        for e in recorded.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
    ]
    assert failed.application_failure_info.type == "circuit_open"
    replayer = Replayer(workflows=[DealWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(recorded)  # raises on any nondeterminism
