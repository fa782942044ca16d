"""``dealflow worker`` started before Temporal: it waits for it (a warning, backoff), then
connects and works; stopped while waiting, it ends cleanly."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from temporalio.client import Client

import worker
from dealflow.settings import Settings
from tests.conftest import free_port, start_dev_server


def settings_for(address: str, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite:///{tmp_path / 'w.db'}",
        data_dir=tmp_path,
        temporal_address=address,
        task_queue=f"start-{free_port()}",
        metrics_port=0,
    )


async def warnings_logged(caplog: pytest.LogCaptureFixture, n: int) -> None:
    for _ in range(400):
        if sum("Temporal not reachable" in r.getMessage() for r in caplog.records) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {n} 'not reachable' warnings")


async def test_stopped_while_waiting_for_temporal_it_ends_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dealflow.worker")
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(settings_for(f"127.0.0.1:{free_port()}", tmp_path), stop))
    await warnings_logged(caplog, 2)
    assert not task.done(), "it keeps trying instead of dying with a traceback"
    stop.set()
    await asyncio.wait_for(task, timeout=30)


async def test_temporal_coming_up_later_is_connected_to(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dealflow.worker")
    port = free_port()
    settings = settings_for(f"127.0.0.1:{port}", tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(settings, stop))
    await warnings_logged(caplog, 1)
    env = await start_dev_server(port)
    try:
        client: Client = env.client
        # Connected: it created the reconciliation schedule and polls its task queue.
        for _ in range(600):
            schedules = [s.id async for s in await client.list_schedules()]
            if "dealflow-reconcile" in schedules:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the worker never connected")
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, timeout=60)
    finally:
        await env.shutdown()
