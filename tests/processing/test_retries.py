"""Retries follow each kind of work's policy (asserted from the workflow history), a permanent
4xx fails at once, and processing errors are dead-lettered while refusals stay ``failed``."""

from __future__ import annotations

from datetime import timedelta

from temporalio.testing import WorkflowEnvironment

from activities.integrations import INTEGRATION_RETRY
from store.db import Database
from tests.processing.support import (
    activity_runs,
    created,
    event,
    event_row,
    integration_pipeline,
    new_id,
    plain_pipeline,
    store_events,
)
from tests.workflows.support import eventually, history, send


async def _qualify(client, task_queue: str, db: Database, pipeline: str):  # type: ignore[no-untyped-def]
    deal = new_id("deal")
    events = [
        created(deal, pipeline),
        event(deal, "deal.stage_change_requested", to_stage="qualified"),
    ]
    store_events(db, events)
    handle = await send(client, task_queue, deal, events)
    return deal, handle, events


async def test_integration_retries_follow_the_backoff_then_succeed(
    dev_env: WorkflowEnvironment, db: Database, run_worker, fake_integration
) -> None:
    client = dev_env.client
    with fake_integration(script=[503, 503]) as crm:
        async with run_worker(client, db, integrations={"crm": crm.url}) as settings:
            pipeline = integration_pipeline(db)
            deal, handle, events = await _qualify(client, settings.task_queue, db, pipeline)
            await eventually(lambda: history(db, deal, "action_run"), "the integration call")
            [run] = await activity_runs(handle, "run_effect")
    assert crm.hits == 3
    assert [r["status"] for r in crm.received] == [503, 503, 200]
    keys = {r["headers"]["Idempotency-Key"] for r in crm.received}
    assert len(keys) == 1, "one idempotency key across the retries"
    # The policy the workflow scheduled it with is the integration policy ...
    retry = run["retry"]
    assert retry.initial_interval.ToTimedelta() == INTEGRATION_RETRY.initial_interval
    assert retry.backoff_coefficient == INTEGRATION_RETRY.backoff_coefficient
    assert retry.maximum_attempts == INTEGRATION_RETRY.maximum_attempts
    # ... and the server followed it: third attempt, after at least 1 s + 2 s of backoff.
    assert run["attempt"] == 3
    assert run["outcome"] == "completed"
    assert run["last_failure"] is not None and "503" in run["last_failure"].message
    waited = run["started_at"] - run["scheduled_at"]
    assert waited >= timedelta(seconds=1 + 2)
    for e in events:
        row = event_row(db, e.event_id)
        assert row is not None and row.status == "processed"


async def test_a_permanent_4xx_fails_at_once(
    dev_env: WorkflowEnvironment, db: Database, run_worker, fake_integration
) -> None:
    client = dev_env.client
    with fake_integration(status=422) as crm:
        async with run_worker(client, db, integrations={"crm": crm.url}) as settings:
            pipeline = integration_pipeline(db)
            deal, handle, _ = await _qualify(client, settings.task_queue, db, pipeline)
            [failed] = await eventually(
                lambda: history(db, deal, "action_failed"), "the failed call"
            )
            [run] = await activity_runs(handle, "run_effect")
    assert crm.hits == 1
    assert run["attempt"] == 1 and run["outcome"] == "failed"
    assert "422" in failed.data["error"]


async def test_processing_errors_are_dead_lettered_and_refusals_fail(
    dev_env: WorkflowEnvironment, db: Database, run_worker
) -> None:
    client = dev_env.client
    async with run_worker(client, db) as settings:
        pipeline = plain_pipeline(db)
        ghost, unknown, real = new_id("deal"), new_id("deal"), new_id("deal")
        no_deal = event(ghost, "deal.stage_change_requested", to_stage="qualified")
        no_pipeline = created(unknown, "pip_does_not_exist")
        good = created(real, pipeline)
        skip = event(real, "deal.stage_change_requested", to_stage="proposal")  # skips one
        store_events(db, [no_deal, no_pipeline, good, skip])
        await send(client, settings.task_queue, ghost, [no_deal])
        await send(client, settings.task_queue, unknown, [no_pipeline])
        await send(client, settings.task_queue, real, [good, skip])

        def final(event_id: str):  # type: ignore[no-untyped-def]
            row = event_row(db, event_id)
            return row if row and row.status not in ("accepted", "queued", "processing") else None

        rows = {
            e.event_id: await eventually(lambda e=e: final(e.event_id), e.event_id)
            for e in [no_deal, no_pipeline, good, skip]
        }
    assert rows[no_deal.event_id].status == "dead_lettered"
    assert "does not exist" in (rows[no_deal.event_id].last_error or "")
    assert rows[no_pipeline.event_id].status == "dead_lettered"
    assert "pip_does_not_exist" in (rows[no_pipeline.event_id].last_error or "")
    assert rows[good.event_id].status == "processed"
    refused = rows[skip.event_id]
    assert refused.status == "failed", "a business refusal is final, not a dead letter"
    assert refused.last_error and "skip" in refused.last_error.lower()
