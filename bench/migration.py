"""A bulk migration of 5,000 deals that survives ``kill -9`` of the worker half-way.

    .venv/bin/python bench/migration.py [--deals 5000] [--batch-size 100] [--rate 1000]
                                        [--database-url postgresql+psycopg://…]

Starts a Temporal dev server (in memory), a real worker process (``python -m dealflow.cli
worker``) and the real API process on a scratch SQLite database (or the one given). It creates
two pipelines through the API, opens the deals the way the relay does (signal-with-start with a
``deal.created``; one in ten is created won, so its workflow has completed), asks for a dry run,
then starts the real run. When half of the deals have moved it kills the worker with SIGKILL
and starts a new one. At the end it checks that every deal moved exactly once: its read-model
row is in the target pipeline in the mapped stage, it has exactly one ``migrated`` history entry
of this migration, and the migration's counters say so. It prints deals/s as the API reports it
(the whole run, the crash and its recovery included) and the rate before the kill.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx
from sqlmodel import col, func, select
from temporalio.client import Client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from domain.events import DealEvent  # noqa: E402
from store.db import Database  # noqa: E402
from store.migrate import upgrade  # noqa: E402
from store.models import Deal, DealHistory  # noqa: E402
from workflows.messages import DealInput, EventBatch, deal_workflow_id  # noqa: E402

ADMIN_TOKEN = "dfa_bench_migration_admin_token_0123"
SECRET_KEY = "bench-migration-secret-key-0123456789"
SOURCE = {
    "name": "Old sales",
    "type": "sales",
    "currency": "USD",
    "probability_mode": "stage",
    "stages": [
        {"key": "lead", "name": "Lead", "probability": 10},
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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Processes:
    """The worker and API child processes (``python -m dealflow.cli …``)."""

    env: dict[str, str]
    workdir: Path
    code_dir: Path = ROOT
    """Where the children import dealflow from (``main`` uses a snapshot of HEAD)."""
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)

    def spawn(self, what: str, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{what}-{len(self.children)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "dealflow.cli", what],
            cwd=self.code_dir,
            env={**self.env, **(extra or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.children.append(proc)
        self.logs.append(log)
        return proc

    def stop(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.children:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for log in self.logs:
            log.close()


def _migrated_counts(db: Database, migration_id: str) -> dict[str, int]:
    """How many ``migrated`` history entries of this migration each deal has."""
    with db.session() as session:
        found = session.exec(
            select(DealHistory.deal_id, DealHistory.data).where(DealHistory.kind == "migrated")
        ).all()
    counts: dict[str, int] = {}
    for deal_id, data in found:
        if data.get("migration_id") == migration_id:
            counts[deal_id] = counts.get(deal_id, 0) + 1
    return counts


def _count_in(db: Database, pipeline_id: str) -> int:
    """Deal rows in a pipeline (a cheap, indexed count to poll)."""
    with db.session() as session:
        return int(
            session.exec(
                select(func.count()).select_from(Deal).where(Deal.pipeline_id == pipeline_id)
            ).one()
        )


def _rows(db: Database, deal_ids: list[str]) -> dict[str, Deal]:
    out: dict[str, Deal] = {}
    with db.session() as session:
        for start in range(0, len(deal_ids), 500):
            chunk = deal_ids[start : start + 500]
            for row in session.exec(select(Deal).where(col(Deal.deal_id).in_(chunk))).all():
                out[row.deal_id] = row
    return out


async def _poll(
    check: Callable[[], Any], what: str, seconds: float, alive: Callable[[], None]
) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        await asyncio.sleep(0.25)


async def scenario(
    client: Client,
    database_url: str,
    *,
    deals: int,
    batch_size: int,
    rate: float,
    workdir: Path,
    out: TextIO = sys.stdout,
    code_dir: Path = ROOT,
) -> dict[str, Any]:
    """Seed ``deals`` deals, migrate them, ``kill -9`` the worker half-way, verify exactly once.

    Raises AssertionError if any deal did not move exactly once. Returns the figures.
    """
    upgrade(database_url)
    db = Database(database_url)
    queue = f"bench-mig-{uuid.uuid4().hex[:6]}"
    port = _free_port()
    procs = Processes(
        env={
            **os.environ,
            "DEALFLOW_TEMPORAL_ADDRESS": client.service_client.config.target_host,
            "DEALFLOW_DATABASE_URL": database_url,
            "DEALFLOW_TASK_QUEUE": queue,
            "DEALFLOW_METRICS_PORT": "0",
            "DEALFLOW_LOG_LEVEL": "WARNING",
            "DEALFLOW_DATA_DIR": str(workdir),
            "DEALFLOW_API_PORT": str(port),
            "DEALFLOW_ADMIN_TOKEN": ADMIN_TOKEN,
            "DEALFLOW_SECRET_KEY": SECRET_KEY,
        },
        workdir=workdir,
        code_dir=code_dir,
    )

    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    worker = procs.spawn("worker")
    api = procs.spawn("api")

    def alive() -> None:
        for proc, name in ((worker, "worker"), (api, "api")):
            if proc.poll() is not None:
                raise RuntimeError(f"the {name} exited ({proc.returncode}); logs in {workdir}")

    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

            async def ready() -> bool:
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            for _ in range(1200):
                if await ready():
                    break
                alive()
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the API did not become ready")

            async def pipeline(body: dict[str, Any]) -> str:
                resp = await http.post("/v1/pipelines", json=body, headers=auth)
                assert resp.status_code == 201, resp.text
                pid = str(resp.json()["id"])
                resp = await http.post(f"/v1/pipelines/{pid}/activate", json={}, headers=auth)
                assert resp.status_code == 200, resp.text
                return pid

            source, target = await pipeline(SOURCE), await pipeline(TARGET)
            tag = uuid.uuid4().hex[:6]
            plan = {
                f"bm-{tag}-{n:06d}": ("won" if n % 10 == 9 else ("lead", "qualified")[n % 2])
                for n in range(deals)
            }
            ids = list(plan)
            semaphore = asyncio.Semaphore(64)

            async def open_deal(deal_id: str, stage: str) -> None:
                event = DealEvent(
                    event_id=f"evt_{deal_id}",
                    type="deal.created",
                    data={
                        "deal_id": deal_id,
                        "pipeline_id": source,
                        "title": deal_id,
                        "value": 100,
                        "currency": "USD",
                        "stage": stage,
                    },
                    received_at=datetime.now(UTC),
                )
                async with semaphore:
                    await client.start_workflow(
                        "DealWorkflow",
                        DealInput(deal_id=deal_id),
                        id=deal_workflow_id(deal_id),
                        task_queue=queue,
                        start_signal="events",
                        start_signal_args=[EventBatch(events=[event])],
                    )

            t0 = time.monotonic()
            await asyncio.gather(*(open_deal(d, s) for d, s in plan.items()))
            await _poll(
                lambda: _count_in(db, source) == deals, f"{deals} deal rows", 600 + deals, alive
            )
            say(f"seeded {deals} deals in {time.monotonic() - t0:.1f}s")

            body = {"to_pipeline_id": target, "stage_map": STAGE_MAP}
            resp = await http.post(f"/v1/pipelines/{source}/migrations", json=body, headers=auth)
            assert resp.status_code == 200, resp.text
            assert resp.json()["total"] == deals, resp.json()
            body.update(dry_run=False, batch_size=batch_size, rate_per_second=rate)
            resp = await http.post(f"/v1/pipelines/{source}/migrations", json=body, headers=auth)
            assert resp.status_code == 202, resp.text
            mid = resp.json()["id"]
            started = time.monotonic()

            half = deals // 2
            await _poll(lambda: _count_in(db, target) >= half, "half of the deals", 600, alive)
            before_kill = _count_in(db, target)
            kill_after = time.monotonic() - started
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
            assert worker.returncode == -signal.SIGKILL
            say(
                f"kill -9 of the worker after {kill_after:.1f}s: {before_kill} of {deals} deals "
                f"moved ({before_kill / kill_after:.1f} deals/s so far); starting a new worker"
            )
            worker = procs.spawn("worker")

            async def view() -> dict[str, Any]:
                resp = await http.get(f"/v1/migrations/{mid}", headers=auth)
                assert resp.status_code == 200, resp.text
                return resp.json()  # type: ignore[no-any-return]

            final: dict[str, Any] = {}
            deadline = time.monotonic() + 600 + deals / 5
            while time.monotonic() < deadline:
                final = await view()
                if final["status"] in ("completed", "failed", "cancelled"):
                    break
                alive()
                await asyncio.sleep(0.2)
            wall = time.monotonic() - started
            say(f"migration {mid}: {final}")
            assert final.get("status") == "completed", final
    finally:
        await asyncio.to_thread(procs.stop)

    rows = _rows(db, ids)
    counts = _migrated_counts(db, mid)
    db.dispose()
    wrong_place = [
        d
        for d in ids
        if rows[d].pipeline_id != target
        or rows[d].stage != STAGE_MAP[plan[d]]
        or rows[d].state.get("migrations") != [mid]
    ]
    not_once = {d: counts.get(d, 0) for d in ids if counts.get(d, 0) != 1}
    figures = {
        "migration_id": mid,
        "deals": deals,
        "migrated": final["migrated"],
        "skipped": final["skipped"],
        "failed": final["failed"],
        "deals_per_second": final["deals_per_second"],
        "wall_seconds": round(wall, 1),
        "before_kill": before_kill,
        "rate_before_kill": round(before_kill / kill_after, 1),
        "wrong_place": len(wrong_place),
        "not_exactly_once": len(not_once),
    }
    assert not wrong_place, f"{len(wrong_place)} deals not in place, e.g. {wrong_place[:5]}"
    assert not not_once, (
        f"{len(not_once)} deals not moved exactly once, e.g. {list(not_once.items())[:5]}"
    )
    assert (final["migrated"], final["skipped"], final["failed"]) == (deals, 0, 0), final
    return figures


def snapshot_of_head(into: Path) -> Path:
    """``git archive HEAD`` of the repository, unpacked into ``into``."""
    into.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "HEAD"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=5_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rate", type=float, default=1000, help="rate_per_second of the run")
    parser.add_argument("--database-url", default=None, help="default: a scratch SQLite file")
    parser.add_argument(
        "--working-tree",
        action="store_true",
        help="run the worker and API from the working tree, not from a snapshot of HEAD",
    )
    args = parser.parse_args()

    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    from workflows.search import SEARCH_ATTRIBUTES

    workdir = Path(tempfile.mkdtemp(prefix="dealflow-bench-migration-"))
    url = args.database_url or f"sqlite:///{workdir / 'bench.db'}"
    code_dir = ROOT
    if not args.working_tree:
        # The Temporal sandbox re-imports workflow modules from disk for every run it replays:
        # edits to the working tree during a long run would change workflow code under it.
        code_dir = snapshot_of_head(workdir / "src")
    extra: list[str] = []
    for name, kind in SEARCH_ATTRIBUTES.items():
        extra += ["--search-attribute", f"{name}={kind}"]
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        dev_server_extra_args=extra,
        ui=False,
    )
    try:
        figures = await scenario(
            env.client,
            url,
            deals=args.deals,
            batch_size=args.batch_size,
            rate=args.rate,
            workdir=workdir,
            code_dir=code_dir,
        )
    finally:
        await env.shutdown()
    backend = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    print(
        f"\n{figures['deals']} deals migrated on {backend} (batch {args.batch_size}, throttle "
        f"{args.rate:g}/s) with a kill -9 of the worker half-way: "
        f"{figures['deals_per_second']} deals/s over the whole run "
        f"({figures['wall_seconds']}s, recovery included; {figures['rate_before_kill']} deals/s "
        f"before the kill); every deal moved exactly once "
        f"({figures['not_exactly_once']} not exactly once, {figures['wrong_place']} misplaced)"
    )


if __name__ == "__main__":
    asyncio.run(main())
