"""Migration tests: the real API (uvicorn, real HTTP) and a real worker on the Temporal dev
server, writing the read model to the real databases (SQLite and PostgreSQL).

Deals are created as the relay creates them (signal-with-start of ``deal-{id}`` with a
``deal.created`` event) and the tests wait until their read-model rows exist.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, func, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from dealflow.settings import Settings
from domain.events import DealEvent
from store.db import Database
from store.models import Deal, DealHistory
from tests.conftest import free_port
from tests.servers import ServerThread
from worker import build_worker
from workflows.messages import DealInput, EventBatch

ADMIN_TOKEN = "dfa_migrations_admin_token_0123456789"
SECRET_KEY = "migrations-test-secret-key-0123456789"

SOURCE = {
    "name": "Old sales",
    "type": "sales",
    "currency": "USD",
    "probability_mode": "stage",
    "stages": [
        {"key": "lead", "name": "Lead", "probability": 10, "sla": {"target": "P2D"}},
        {"key": "qualified", "name": "Qualified", "probability": 40},
        {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
        {"key": "lost", "name": "Lost", "probability": 0, "outcome": "lost"},
    ],
}
TARGET = {
    "name": "New sales",
    "type": "sales",
    "currency": "USD",
    "probability_mode": "stage",
    "stages": [
        {"key": "new", "name": "New", "probability": 5},
        {"key": "working", "name": "Working", "probability": 50},
        {"key": "closed_won", "name": "Closed won", "probability": 100, "outcome": "won"},
        {"key": "closed_lost", "name": "Closed lost", "probability": 0, "outcome": "lost"},
    ],
}
STAGE_MAP = {"lead": "new", "qualified": "working", "won": "closed_won", "lost": "closed_lost"}


async def eventually(check: Callable[[], Any], what: str, tries: int = 1200) -> Any:
    """Poll ``check`` (in a thread, a bounded number of times) until it returns something truthy."""
    for _ in range(tries):
        result = await asyncio.to_thread(check)
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def created_event(deal_id: str, pipeline_id: str, stage: str | None) -> DealEvent:
    data: dict[str, Any] = {
        "deal_id": deal_id,
        "pipeline_id": pipeline_id,
        "title": f"Deal {deal_id}",
        "value": 1000,
        "currency": "USD",
    }
    if stage is not None:
        data["stage"] = stage
    return DealEvent(
        event_id=f"evt_{uuid.uuid4().hex[:16]}",
        type="deal.created",
        data=data,
        source_id="src_migration_test",
        received_at=datetime.now(UTC),
    )


async def start_deals(
    client: Client, task_queue: str, pipeline_id: str, deals: dict[str, str | None]
) -> None:
    """What the relay does for each ``deal.created``: signal-with-start ``deal-{id}``."""
    semaphore = asyncio.Semaphore(50)

    async def one(deal_id: str, stage: str | None) -> None:
        async with semaphore:
            await client.start_workflow(
                "DealWorkflow",
                DealInput(deal_id=deal_id),
                id=f"deal-{deal_id}",
                task_queue=task_queue,
                start_signal="events",
                start_signal_args=[EventBatch(events=[created_event(deal_id, pipeline_id, stage)])],
            )

    await asyncio.gather(*(one(d, s) for d, s in deals.items()))


def count_rows(db: Database, deal_ids: list[str]) -> int:
    with db.session() as session:
        return int(
            session.exec(
                select(func.count()).select_from(Deal).where(col(Deal.deal_id).in_(deal_ids))
            ).one()
        )


def rows(db: Database, deal_ids: list[str]) -> dict[str, Deal]:
    with db.session() as session:
        found = session.exec(select(Deal).where(col(Deal.deal_id).in_(deal_ids))).all()
    return {r.deal_id: r for r in found}


def migrated_entries(db: Database, deal_ids: list[str], migration_id: str) -> dict[str, int]:
    """How many ``migrated`` history entries of this migration each deal has."""
    with db.session() as session:
        found = session.exec(
            select(DealHistory).where(
                col(DealHistory.deal_id).in_(deal_ids), DealHistory.kind == "migrated"
            )
        ).all()
    counts: dict[str, int] = {}
    for h in found:
        if h.data.get("migration_id") == migration_id:
            counts[h.deal_id] = counts.get(h.deal_id, 0) + 1
    return counts


@dataclass
class Harness:
    http: httpx.AsyncClient
    db: Database
    client: Client
    task_queue: str
    keys: dict[str, str] = field(default_factory=dict)

    async def call(
        self, method: str, path: str, *, as_: str = "admin", **kw: Any
    ) -> httpx.Response:
        token = ADMIN_TOKEN if as_ == "admin" else self.keys[as_]
        return await self.http.request(
            method, path, headers={"Authorization": f"Bearer {token}"}, **kw
        )

    async def pipeline(self, body: dict[str, Any]) -> str:
        resp = await self.call("POST", "/v1/pipelines", json=body)
        assert resp.status_code == 201, resp.text
        pipeline_id = resp.json()["id"]
        resp = await self.call("POST", f"/v1/pipelines/{pipeline_id}/activate", json={})
        assert resp.status_code == 200, resp.text
        return str(pipeline_id)

    async def deals(self, pipeline_id: str, deals: dict[str, str | None]) -> list[str]:
        await start_deals(self.client, self.task_queue, pipeline_id, deals)
        ids = list(deals)
        await eventually(lambda: count_rows(self.db, ids) == len(ids), f"{len(ids)} deal rows")
        return ids

    async def migration(self, migration_id: str) -> dict[str, Any]:
        resp = await self.call("GET", f"/v1/migrations/{migration_id}", as_="viewer")
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    async def wait_for(self, migration_id: str, *statuses: str) -> dict[str, Any]:
        for _ in range(2400):
            view = await self.migration(migration_id)
            if view["status"] in statuses:
                return view
            await asyncio.sleep(0.05)
        raise AssertionError(f"migration {migration_id} never reached {statuses}: {view}")


@asynccontextmanager
async def api_server(
    database_url: str, data_dir: Path, temporal_address: str, task_queue: str
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        data_dir=data_dir,
        admin_token=ADMIN_TOKEN,
        secret_key=SECRET_KEY,
        temporal_address=temporal_address,
        task_queue=task_queue,
        metrics_port=0,
        log_format="text",
    )
    server = ServerThread(create_app(settings), free_port())
    await asyncio.to_thread(server.start)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.server.config.port}", timeout=30
        ) as http:
            keys: dict[str, str] = {}
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            resp = await http.post(
                "/v1/api-keys",
                json={"name": "viewer", "role": "viewer", "subject": "viewer-mig"},
                headers=headers,
            )
            assert resp.status_code == 201, resp.text
            keys["viewer"] = resp.json()["key"]
            # The API connects to Temporal in the background: wait until it has.
            for _ in range(600):
                ready = await http.get("/readyz")
                if ready.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            yield http, keys
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture(scope="package")
async def harness(
    dev_env: WorkflowEnvironment, live_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Harness]:
    task_queue = f"migrations-{uuid.uuid4().hex[:8]}"
    database_url = live_database_url  # its relay is live: a database of its own
    db = Database(database_url)
    target = dev_env.client.service_client.config.target_host
    worker = build_worker(dev_env.client, db, Settings(task_queue=task_queue, metrics_port=0))
    try:
        async with (
            worker,
            api_server(database_url, tmp_path_factory.mktemp("mig"), target, task_queue) as (
                http,
                keys,
            ),
        ):
            yield Harness(http=http, db=db, client=dev_env.client, task_queue=task_queue, keys=keys)
    finally:
        db.dispose()
