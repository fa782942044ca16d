"""Processing benchmark: events fully processed per second end to end (webhook 202 → event
``processed`` in the store), against a bare temporalio signal-with-start loop on the same
Temporal dev server in the same run; then webhook-to-applied latency below saturation.

    .venv/bin/python bench/processing.py [--deals 200] [--per-deal 10] [--bare 1000]

1. Starts a Temporal dev server (in memory, loopback) for the whole run.
2. Bare baseline: ``--bare`` signal-with-starts of a trivial workflow (64 in flight), drained
   by one in-process worker: signal-with-starts per second until every workflow completed.
3. dealflow: the real API (``dealflow api``) and worker (``dealflow worker``) as processes on a
   scratch SQLite database; ``deals x per-deal`` signed webhooks (a ``deal.created`` then
   ``deal.activity`` events), as fast as 32 connections go; events per second from the first
   request until the last event is ``processed``. Ratio = that / the bare rate.
4. Latency below saturation: the same again at half the measured rate, paced; p50/p95 of
   ``processed_at - received_at`` (the 202) over its events.

Everything is bounded (fixed event counts, deadlines) and on 127.0.0.1.
"""

# ruff: noqa: ASYNC220, ASYNC221, ASYNC240  (a benchmark driver: blocking setup is fine)
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from temporalio import workflow
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "dfa_bench_admin_token_0123456789"
SECRET_KEY = "bench-secret-key-for-the-secret-box"


@workflow.defn(name="BareWorkflow")
class BareWorkflow:
    def __init__(self) -> None:
        self.got = 0

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.got > 0)
        return self.got

    @workflow.signal
    def events(self, n: int) -> None:
        self.got += n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def bare(env: WorkflowEnvironment, n: int) -> float:
    queue = f"bare-{uuid.uuid4().hex[:6]}"
    client = env.client
    sem = asyncio.Semaphore(64)
    async with Worker(
        client,
        task_queue=queue,
        workflows=[BareWorkflow],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        start = time.perf_counter()

        async def one(i: int):  # type: ignore[no-untyped-def]
            async with sem:
                return await client.start_workflow(
                    "BareWorkflow",
                    id=f"bare-{queue}-{i}",
                    task_queue=queue,
                    start_signal="events",
                    start_signal_args=[1],
                )

        handles = await asyncio.gather(*[one(i) for i in range(n)])
        for h in handles:
            await h.result()
        elapsed = time.perf_counter() - start
    return n / elapsed


def sign(secret: str, body: bytes, delivery: str) -> dict[str, str]:
    mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Signature": mac, "X-Event-Id": delivery, "Content-Type": "application/json"}


def statuses(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path, timeout=30) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM events GROUP BY status").fetchall())


def latencies(
    db_path: Path, source_id: str, since: str = "received_at", until: str = "processed_at"
) -> list[float]:
    """Seconds from ``since`` to ``until`` (``received_at``: the 202; ``queued_at``: the
    relay's claim; ``processed_at``: the outcome), per processed event of the source."""
    with sqlite3.connect(db_path, timeout=30) as conn:
        rows = conn.execute(
            f"SELECT (julianday({until}) - julianday({since})) * 86400.0 FROM events "
            "WHERE source_id = ? AND status = 'processed'",
            (source_id,),
        ).fetchall()
    return [r[0] for r in rows]


async def run_load(
    http: httpx.AsyncClient,
    source: dict,
    pipeline: str,
    deals: int,
    per_deal: int,
    rate: float | None,
) -> tuple[float, int]:
    """Send the webhooks (paced at ``rate``/s if given); returns the start time and count."""
    bodies: list[bytes] = []
    ids = [f"deal_{uuid.uuid4().hex[:10]}" for _ in range(deals)]
    for deal in ids:
        bodies.append(
            json.dumps(
                {
                    "type": "deal.created",
                    "data": {
                        "deal_id": deal,
                        "pipeline_id": pipeline,
                        "title": "B",
                        "value": 1,
                        "currency": "USD",
                    },
                }
            ).encode()
        )
    for i in range(per_deal - 1):
        for deal in ids:
            bodies.append(
                json.dumps(
                    {"type": "deal.activity", "data": {"deal_id": deal, "kind": f"a{i}"}}
                ).encode()
            )
    sem = asyncio.Semaphore(32)
    start = time.perf_counter()

    async def one(k: int, body: bytes) -> None:
        if rate:
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        async with sem:
            r = await http.post(
                f"/v1/webhooks/{source['id']}",
                content=body,
                headers=sign(source["secret"], body, uuid.uuid4().hex),
            )
            assert r.status_code == 202, r.text

    # Each deal's deal.created is answered before its other events are sent (order matters).
    await asyncio.gather(*[one(k, b) for k, b in enumerate(bodies[:deals])])
    await asyncio.gather(*[one(k, b) for k, b in enumerate(bodies) if k >= deals])
    return start, len(bodies)


async def wait_processed(db_path: Path, total: int, deadline_s: float) -> None:
    deadline = time.perf_counter() + deadline_s
    while True:
        got = statuses(db_path)
        done = got.get("processed", 0) + got.get("failed", 0) + got.get("dead_lettered", 0)
        if done >= total:
            if got.get("processed", 0) < total:
                raise SystemExit(f"not all processed: {got}")
            return
        if time.perf_counter() > deadline:
            raise SystemExit(f"gave up: {got}")
        await asyncio.sleep(0.05)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deals", type=int, default=200)
    parser.add_argument("--per-deal", type=int, default=10)
    parser.add_argument("--bare", type=int, default=1000)
    args = parser.parse_args()
    temporal = str(Path(sys.executable).parent / "temporal")
    if not Path(temporal).exists():
        temporal = shutil.which("temporal") or temporal
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=temporal,
        dev_server_extra_args=[
            "--search-attribute",
            "DealId=Keyword",
            "--search-attribute",
            "PipelineId=Keyword",
            "--search-attribute",
            "DealStage=Keyword",
            "--search-attribute",
            "DealStatus=Keyword",
            "--search-attribute",
            "IsRotting=Bool",
        ],
        ui=False,
    )
    tmp = Path(tempfile.mkdtemp(prefix="dealflow-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        bare_rate = await bare(env, args.bare)
        print(f"bare signal-with-start: {args.bare} workflows, {bare_rate:,.0f}/s")
        target = env.client.service_client.config.target_host
        db_path = tmp / "bench.db"
        port = free_port()
        penv = {
            **os.environ,
            "DEALFLOW_DATABASE_URL": f"sqlite:///{db_path}",
            "DEALFLOW_TEMPORAL_ADDRESS": target,
            "DEALFLOW_TASK_QUEUE": "bench",
            "DEALFLOW_API_PORT": str(port),
            "DEALFLOW_ADMIN_TOKEN": ADMIN,
            "DEALFLOW_SECRET_KEY": SECRET_KEY,
            "DEALFLOW_DATA_DIR": str(tmp),
            "DEALFLOW_METRICS_PORT": "0",
            "DEALFLOW_LOG_LEVEL": "WARNING",
            "DEALFLOW_GLOBAL_RATE_PER_SECOND": "100000",
            "DEALFLOW_GLOBAL_RATE_BURST": "100000",
        }
        log = (tmp / "procs.log").open("ab")
        subprocess.run(
            [sys.executable, "-m", "dealflow.cli", "migrate"],
            env=penv,
            cwd=ROOT,
            check=True,
            stdout=log,
            stderr=log,
        )
        for cmd in ("api", "worker"):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "dealflow.cli", cmd],
                    env=penv,
                    cwd=ROOT,
                    stdout=log,
                    stderr=log,
                )
            )
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            for _ in range(600):
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            created = (
                await http.post(
                    "/v1/pipelines",
                    headers=auth,
                    json={
                        "name": "bench",
                        "type": "sales",
                        "currency": "USD",
                        "probability_mode": "stage",
                        "stages": [
                            {"key": "lead", "name": "Lead", "probability": 10},
                            {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
                            {"key": "lost", "name": "Lost", "probability": 0, "outcome": "lost"},
                        ],
                    },
                )
            ).json()
            if "id" not in created:
                raise SystemExit(f"pipeline not created: {created}")
            pipeline = created["id"]
            # Warm-up (connections, imports, first workflow tasks).
            warm = (
                await http.post("/v1/sources", headers=auth, json={"name": "w", "scheme": "hmac"})
            ).json()
            _, n = await run_load(http, warm, pipeline, 20, 2, None)
            await wait_processed(db_path, n, 120)
            done_before = n

            src = (
                await http.post("/v1/sources", headers=auth, json={"name": "s", "scheme": "hmac"})
            ).json()
            start, n = await run_load(http, src, pipeline, args.deals, args.per_deal, None)
            sent_s = time.perf_counter() - start
            await wait_processed(db_path, done_before + n, 600)
            elapsed = time.perf_counter() - start
            rate = n / elapsed
            done_before += n
            sat = latencies(db_path, src["id"])
            print(
                f"dealflow end to end: {n} events ({args.deals} deals x {args.per_deal}), "
                f"sent in {sent_s:.1f}s, all processed in {elapsed:.1f}s: {rate:,.0f} events/s"
            )
            print(f"ratio to bare signal-with-start: {rate / bare_rate:.2f}")
            q = statistics.quantiles(sat, n=100)
            print(f"  at saturation: p50 {q[49] * 1000:,.0f} ms, p95 {q[94] * 1000:,.0f} ms")

            paced = rate / 2
            src2 = (
                await http.post("/v1/sources", headers=auth, json={"name": "p", "scheme": "hmac"})
            ).json()
            deals2 = max(10, args.deals // 2)
            start, n = await run_load(http, src2, pipeline, deals2, args.per_deal, paced)
            await wait_processed(db_path, done_before + n, 600)
            lat = latencies(db_path, src2["id"])
            q = statistics.quantiles(lat, n=100)
            print(
                f"below saturation ({paced:,.0f} events/s offered, {n} events): "
                f"webhook-to-applied p50 {q[49] * 1000:,.0f} ms, p95 {q[94] * 1000:,.0f} ms, "
                f"mean {statistics.fmean(lat) * 1000:,.0f} ms"
            )
            hand = statistics.quantiles(latencies(db_path, src2["id"], until="queued_at"), n=100)
            flow = statistics.quantiles(latencies(db_path, src2["id"], "queued_at"), n=100)
            print(
                f"  of which 202 -> relay claim p50 {hand[49] * 1000:,.0f} ms, "
                f"p95 {hand[94] * 1000:,.0f} ms; claim -> applied p50 {flow[49] * 1000:,.0f} ms, "
                f"p95 {flow[94] * 1000:,.0f} ms"
            )
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        await env.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
