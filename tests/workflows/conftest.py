"""Fixtures for deal workflow tests: a real worker per test on its own task queue."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from temporalio.client import Client

from dealflow.settings import Settings
from store.db import Database
from tests.workflows.support import terminate_started
from worker import build_worker
from workflows.search import Upserts


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a long workflow test (20,000 events)")


@pytest.fixture
def task_queue() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def no_upserts() -> Iterator[None]:
    """The time-skipping server cannot register custom search attributes."""
    before = Upserts.enabled
    Upserts.enabled = False
    yield
    Upserts.enabled = before


@pytest.fixture
def with_upserts() -> Iterator[None]:
    before = Upserts.enabled
    Upserts.enabled = True
    yield
    Upserts.enabled = before


@pytest.fixture(scope="session")
def sqlite_db(sqlite_database: str) -> Iterator[Database]:
    """For the slow tests: one backend is enough (the read model is tested on both elsewhere)."""
    database = Database(sqlite_database)
    yield database
    database.dispose()


@pytest.fixture
def run_worker(task_queue: str):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def start(client: Client, db: Database, **settings: Any) -> AsyncIterator[None]:
        worker = build_worker(client, db, Settings(task_queue=task_queue, **settings))
        async with worker:
            try:
                yield
            finally:
                await terminate_started(task_queue)

    return start
