"""The Temporal worker: runs deal workflows and their activities until SIGINT / SIGTERM, and
the alert dispatcher (the outbox's delivery, the shared failure-rate alert) alongside them."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from prometheus_client import start_http_server
from temporalio.client import Client
from temporalio.plugin import SimplePlugin
from temporalio.worker import Worker

from activities.alerts import AlertDispatcher
from activities.deals import DealActivities
from activities.effects import EffectActivities
from activities.events import PROCESSING_WORKFLOWS, processing_activities, watch_dead_letters
from activities.migration import MigrationActivities
from activities.pipelines import PipelineActivities
from dealflow.logs import setup_logging
from dealflow.prometheus import use_dealflow_names
from dealflow.settings import Settings, load_settings
from dealflow.temporal import connect, ensure_search_attributes
from store.db import Database
from store.migrate import upgrade
from workflows.deal import DealWorkflow
from workflows.golive import PipelineGoLiveWorkflow
from workflows.migration import MigrationWorkflow
from workflows.reconcile import ensure_schedule

log = logging.getLogger("dealflow.worker")


def build_worker(client: Client, db: Database, settings: Settings) -> Worker:
    deals = DealActivities(db)
    effects = EffectActivities(db, settings)
    pipelines = PipelineActivities(db)
    migrations = MigrationActivities(db, client)
    alerts = AlertDispatcher(db, settings)
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[*PROCESSING_WORKFLOWS, DealWorkflow, PipelineGoLiveWorkflow, MigrationWorkflow],
        activities=[
            *processing_activities(client, db, deals),
            deals.load_pipeline,
            deals.load_deal,
            deals.load_deal_context,
            effects.run_effect,
            pipelines.go_live,
            migrations.next_batch,
            migrations.apply_batch,
            migrations.record,
        ],
        activity_executor=ThreadPoolExecutor(max_workers=32, thread_name_prefix="activity"),
        max_concurrent_activities=32,
        graceful_shutdown_timeout=timedelta(seconds=10),
        # Runs while the worker runs (``async with`` or ``run()``), stops when it shuts down.
        plugins=[SimplePlugin("dealflow.alerts", run_context=alerts.running)],
    )


async def connect_until_up(settings: Settings, stop: asyncio.Event) -> Client | None:
    """Connect to Temporal, retrying with backoff while it is not there (it may start after the
    worker, as in ``docker compose up``); ``None`` if ``stop`` is set first."""
    delay = 0.5
    while True:
        try:
            return await connect(settings)
        except RuntimeError as exc:  # the SDK's "Failed client connect: ..."
            log.warning(
                "Temporal not reachable at %s (%s); retrying in %.1fs",
                settings.temporal_target,
                exc,
                delay,
            )
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
            return None
        except TimeoutError:
            delay = min(delay * 2, 10.0)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (by default: until SIGINT / SIGTERM)."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    upgrade(settings.effective_database_url)
    db = Database(settings.effective_database_url)
    client = await connect_until_up(settings, stop)
    if client is None:  # stopped before Temporal came up
        db.dispose()
        return
    await ensure_search_attributes(client, settings.temporal_namespace)
    metrics = None
    if settings.metrics_port:
        use_dealflow_names()
        metrics, _ = start_http_server(settings.metrics_port, addr=settings.api_host)
    worker = build_worker(client, db, settings)
    watch_dead_letters(db)
    if await ensure_schedule(client, settings):
        log.info("created the reconciliation schedule")
    log.info("worker polling task queue %s on %s", settings.task_queue, settings.temporal_target)
    async with worker:
        await stop.wait()
        log.info("worker stopping: finishing running activities")
    if metrics is not None:
        metrics.shutdown()
        metrics.server_close()
    db.dispose()
    log.info("worker stopped")


def main() -> None:
    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format, "worker")
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
