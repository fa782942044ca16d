"""1,000 webhooks (10% duplicate deliveries, 5% poison payloads) while the worker process is
killed with ``kill -9`` twice and restarted: every good event is applied exactly once, every
poison one is dead-lettered, and reconciliation then finds nothing stuck."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from temporalio.testing import WorkflowEnvironment

from activities.events import ReconcileInput, ReconcileReport
from dealflow.settings import Settings
from store.db import Database
from store.migrate import upgrade
from tests.api.conftest import (
    ADMIN_TOKEN,
    SECRET_KEY,
    dumps,
    native,
    running_api,
    sign_hmac,
    wait_for,
)
from tests.processing.support import native_created

ROOT = Path(__file__).resolve().parents[2]
DEALS, ACTIVITIES, GHOSTS, BAD_PIPELINES, DUPLICATES = 85, 9, 25, 25, 100


class WorkerProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log, self.proc = env, log, None  # type: ignore[var-annotated]

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(  # type: ignore[assignment]
            [sys.executable, "-m", "dealflow.cli", "worker"],
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=out,
        )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def fresh_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'chaos.db'}"
    upgrade(url)
    yield url


def counts(db: Database) -> Counter[str]:
    with db.engine.connect() as conn:
        return Counter(
            dict(conn.execute(text("SELECT status, count(*) FROM events GROUP BY status")).all())
        )


async def test_1000_events_with_duplicates_and_poison_through_two_kill_9s(
    dev_env: WorkflowEnvironment, fresh_url: str, tmp_path: Path
) -> None:
    target = dev_env.client.service_client.config.target_host
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=fresh_url,
        data_dir=tmp_path,
        admin_token=ADMIN_TOKEN,
        secret_key=SECRET_KEY,
        temporal_address=target,
        task_queue=queue,
        metrics_port=0,
        log_format="text",
    )
    worker = WorkerProcess(
        {
            **os.environ,
            "DEALFLOW_TEMPORAL_ADDRESS": target,
            "DEALFLOW_DATABASE_URL": fresh_url,
            "DEALFLOW_TASK_QUEUE": queue,
            "DEALFLOW_METRICS_PORT": "0",
            "DEALFLOW_DATA_DIR": str(tmp_path),
            "DEALFLOW_LOG_LEVEL": "WARNING",
        },
        tmp_path / "worker.log",
    )
    rng = random.Random(4)
    db = Database(fresh_url)
    try:
        with running_api(settings) as api:
            source = api.create_source("hmac")
            pipeline = api.create_pipeline()
            deals = [f"deal_{uuid.uuid4().hex[:10]}" for _ in range(DEALS)]
            creations: list[tuple[str, dict[str, Any]]] = []
            rest: list[tuple[str, dict[str, Any]]] = []
            for deal in deals:
                creations.append(
                    (
                        f"c-{deal}",
                        native_created(deal, pipeline),
                    )
                )
                for i in range(ACTIVITIES):
                    kind = f"{deal}-a{i}"
                    rest.append((kind, native("deal.activity", deal_id=deal, kind=kind)))
            poison: list[tuple[str, dict[str, Any]]] = [
                (f"g{i}", native("deal.stage_change_requested", deal_id=f"ghost_{i}", to_stage="x"))
                for i in range(GHOSTS)
            ] + [
                (
                    f"b{i}",
                    native(
                        "deal.created",
                        deal_id=f"orphan_{i}",
                        pipeline_id="pip_missing",
                        title="T",
                        value=1,
                        currency="USD",
                    ),
                )
                for i in range(BAD_PIPELINES)
            ]
            rng.shuffle(rest)
            mixed = rest + poison
            rng.shuffle(mixed)
            first = creations + mixed[: len(mixed) // 2]
            second = mixed[len(mixed) // 2 :]
            duplicates = rng.sample(first, DUPLICATES // 2) + rng.sample(second, DUPLICATES // 2)

            def deliver(item: tuple[str, dict[str, Any]]) -> tuple[int, dict[str, Any]]:
                delivery, body = item
                raw = dumps(body)
                resp = api.webhook(source["id"], raw, sign_hmac(source["secret"], raw, delivery))
                return resp.status_code, resp.json()

            def send_all(items: list[tuple[str, dict[str, Any]]]) -> list[int]:
                with ThreadPoolExecutor(8) as pool:
                    return [status for status, _ in pool.map(deliver, items)]

            worker.start()
            answers = await asyncio.to_thread(send_all, creations)  # creations first
            answers += await asyncio.to_thread(send_all, first[len(creations) :])
            await wait_for(lambda: counts(db)["processed"] >= 150, within=120)
            worker.kill9()
            answers += await asyncio.to_thread(send_all, duplicates[: DUPLICATES // 2])
            worker.start()
            answers += await asyncio.to_thread(send_all, second)
            await wait_for(lambda: counts(db)["processed"] >= 500, within=120)
            worker.kill9()
            answers += await asyncio.to_thread(send_all, duplicates[DUPLICATES // 2 :])
            worker.start()
            good = DEALS * (1 + ACTIVITIES)
            await wait_for(
                lambda: counts(db)["processed"] + counts(db)["dead_lettered"] >= good + len(poison),
                within=180,
            )
            assert len(answers) == 1000
            assert Counter(answers) == {202: 900, 200: DUPLICATES}
            final = counts(db)
            assert final == {"processed": good, "dead_lettered": len(poison)}, final
            with db.engine.connect() as conn:
                applied = Counter(
                    kind
                    for (kind,) in conn.execute(
                        text("SELECT data FROM deal_history WHERE kind = 'activity'")
                    ).all()
                    for kind in [_kind(kind)]
                )
                dead = {
                    r[0]
                    for r in conn.execute(
                        text("SELECT delivery_id FROM events WHERE status = 'dead_lettered'")
                    )
                }
            assert set(applied) == {kind for kind, _ in rest}
            assert set(applied.values()) == {1}, "every activity applied exactly once"
            assert dead == {delivery for delivery, _ in poison}
            report: ReconcileReport = await dev_env.client.execute_workflow(
                "ReconcileWorkflow",
                ReconcileInput(stuck_after_seconds=0),
                id=f"reconcile-{uuid.uuid4().hex[:8]}",
                task_queue=queue,
                result_type=ReconcileReport,
            )
            assert report.requeued == 0 and report.stuck_accepted == 0
            assert report.deals_checked == DEALS and report.deals_behind == 0
            assert report.dead_letters == len(poison)
    finally:
        worker.stop()
        db.dispose()
        try:
            await dev_env.client.get_schedule_handle("dealflow-reconcile").delete()
        except Exception:
            pass


def _kind(data: Any) -> str:
    import json

    return str((json.loads(data) if isinstance(data, str) else data)["kind"])
