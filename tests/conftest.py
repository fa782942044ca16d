"""Shared fixtures: real databases (SQLite file and PostgreSQL), real Temporal servers.

Servers start once per test session. PostgreSQL tests run when a server answers on
127.0.0.1:5432 (``DEALFLOW_TEST_POSTGRES`` overrides the URL); each session gets its own
database, dropped at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import create_engine, text
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from store.db import Database
from store.migrate import upgrade
from workflows.search import SEARCH_ATTRIBUTES

if TYPE_CHECKING:
    from dealflow.settings import Settings

BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get(
    "DEALFLOW_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _binary(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.exit(f"{name} is missing: install the project with its 'test' extra", 2)
    return found


def postgres_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            pass
        engine = create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


BACKENDS = ["sqlite", *(["postgres"] if postgres_available() else [])]


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A new, migrated PostgreSQL database, dropped afterwards."""
    name = f"dealflow_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    with fresh_pg_database() as url:
        yield url


@contextmanager
def fresh_database(backend: str, directory: Path, name: str) -> Iterator[str]:
    """A new, migrated database: on SQLite the file ``name`` in ``directory``, on PostgreSQL
    (``backend`` "postgres") a database of its own, dropped afterwards."""
    if backend == "sqlite":
        url = f"sqlite:///{directory / name}"
        upgrade(url)
        yield url
    else:
        with fresh_pg_database() as url:
            yield url


@pytest.fixture(scope="session")
def sqlite_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fresh_database("sqlite", tmp_path_factory.mktemp("db"), "dealflow.db") as url:
        yield url


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """Every test that uses the database runs on SQLite and on PostgreSQL."""
    fixture = "sqlite_database" if request.param == "sqlite" else "pg_database"
    return request.getfixturevalue(fixture)


@pytest.fixture(scope="session")
def live_database_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of their own for the harnesses whose relay is connected to Temporal, on the
    backend of ``database_url``: their relay would otherwise hand over the events that the
    "Temporal is down" tests expect to stay ``accepted`` in the shared database."""
    backend = "sqlite" if database_url.startswith("sqlite") else "postgres"
    with fresh_database(backend, tmp_path_factory.mktemp("live-db"), "live.db") as url:
        yield url


@pytest.fixture(params=BACKENDS)
def own_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database of the test's own, on each backend: for tests whose relay claims
    every waiting event (they must neither take nor leave events of other tests)."""
    with fresh_database(request.param, tmp_path, "own.db") as url:
        yield url


@pytest.fixture
def own_db(own_database_url: str) -> Iterator[Database]:
    """A ``Database`` on ``own_database_url``: for tests that look at (or claim) every deal and
    event in it."""
    database = Database(own_database_url)
    yield database
    database.dispose()


@pytest.fixture
def own_sqlite_db(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite database of the test's own: for tests that look at every row of it
    and need one backend only."""
    with fresh_database("sqlite", tmp_path, "own.db") as url:
        database = Database(url)
        yield database
        database.dispose()


@pytest.fixture(scope="session")
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def sqlite_db(sqlite_database: str) -> Iterator[Database]:
    """For the slow tests: one backend is enough (the store and the read model are tested on
    both elsewhere)."""
    database = Database(sqlite_database)
    yield database
    database.dispose()


@pytest.fixture
def run_worker(
    task_queue: str,
) -> Callable[..., AbstractAsyncContextManager[Settings]]:
    """A real worker from ``worker.build_worker`` on the test's ``task_queue`` (the nearest
    conftest's), with settings from ``settings`` only (no ``.env``); yields those settings.
    Workflows it started are terminated afterwards."""
    from dealflow.settings import Settings
    from tests.workflows.support import terminate_started
    from worker import build_worker

    @asynccontextmanager
    async def start(client: Client, db: Database, **settings: Any) -> AsyncIterator[Settings]:
        config = Settings(_env_file=None, task_queue=task_queue, **settings)  # type: ignore[call-arg]
        async with build_worker(client, db, config):
            try:
                yield config
            finally:
                await terminate_started(task_queue)

    return start


@pytest.fixture(scope="module")
async def time_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server per test module: skipping moves the server's clock for every
    workflow on it, so modules must not share one (nor each other's leftover timers)."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=_binary("temporal-test-server"),
    )
    yield env
    await env.shutdown()


async def start_dev_server(port: int | None = None) -> WorkflowEnvironment:
    """A Temporal dev server with the project's search attributes (on ``port``, else any free
    one); the caller shuts it down."""
    extra: list[str] = []
    for name, kind in SEARCH_ATTRIBUTES.items():
        extra += ["--search-attribute", f"{name}={kind}"]
    return await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=_binary("temporal"),
        dev_server_extra_args=extra,
        port=port,
        ui=False,
    )


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_dev_server()
    yield env
    await env.shutdown()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
