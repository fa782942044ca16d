"""Ingress benchmark: the same load against a no-op FastAPI endpoint and against the real
webhook ingress (signature check + durable store), one run, one machine, loopback only.

    .venv/bin/python bench/ingress.py [--duration 10] [--connections 32] \
        [--backends sqlite,postgres]

For each database backend it starts, one after the other and each alone on the machine:

1. ``bench/noop_app.py`` under uvicorn (one process, uvloop + httptools: how ``dealflow api``
   serves), and
2. the real API (``python -m dealflow.cli api``) with Temporal unreachable, so the figure is the
   ingress alone: rate limit, HMAC check of the raw body, JSON parse, schema validation, and a
   group-committed insert into the event store before each 202. The global rate limit is lifted
   (``DEALFLOW_GLOBAL_RATE_PER_SECOND``) so that it does not cap the figure.

The load is ``wrk -t1 -c<connections> -d<duration>`` replaying pre-signed ``hmac``-scheme
webhooks (each a distinct delivery with its own body and signature), after a short warm-up
against a separate source. Without ``wrk`` (``apt-get install wrk``) a Python generator
(asyncio + httpx) is used instead; it is slower than the server it measures, so its ratio
understates the ingress. It prints accepted/s for both, their ratio, and p50/p99 ack latency,
then checks that every 202 is a row in the events table.

PostgreSQL: ``DEALFLOW_BENCH_POSTGRES`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/
postgres``) must let us create and drop a scratch database; the backend is skipped otherwise.
"""

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
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
ADMIN = "dfa_bench_admin_token_0123456789"
SECRET = "bench-hmac-secret-0123456789abcdef"
PG_URL = os.environ.get(
    "DEALFLOW_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"server did not start:\n{log.read_text()[-3000:]}")


@contextmanager
def server(cmd: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(base, proc, log)
            yield base
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def write_requests(path: Path, count: int) -> None:
    """``count`` distinct pre-signed deliveries: "<event id> <signature> <body>" a line."""
    key = SECRET.encode()
    with path.open("w") as out:
        for n in range(count):
            deal = f"bench-{n % 5000}"
            body = orjson.dumps(
                {"type": "deal.activity", "data": {"deal_id": deal, "kind": "call"}}
            )
            sig = hmac.new(key, body, hashlib.sha256).hexdigest()
            out.write(f"bench-{n:08d} {sig} {body.decode()}\n")


def run_wrk(url: str, data: Path, *, duration: float, connections: int) -> dict[str, Any]:
    path = "/" + url.split("/", 3)[3]
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "-s",
        str(BENCH / "ingress.lua"),
        url,
        "--",
        str(data),
        path,
        "1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    res = json.loads(line.removeprefix("RESULT "))
    seconds = res["duration_us"] / 1e6
    return {
        "accepted": res["accepted"],
        "other": res["other"] + res["socket_errors"],
        "seconds": seconds,
        "rate": res["accepted"] / seconds,
        "p50_ms": res["p50_us"] / 1000,
        "p99_ms": res["p99_us"] / 1000,
    }


async def _python_load(
    url: str, lines: list[str], *, duration: float, connections: int
) -> dict[str, Any]:
    latencies: list[float] = []
    accepted = other = 0
    index = 0
    stop_at = time.monotonic() + duration
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal accepted, other, index
            while time.monotonic() < stop_at and index < len(lines):
                event_id, sig, body = lines[index].split(" ", 2)
                index += 1
                headers = {
                    "Content-Type": "application/json",
                    "X-Event-Id": event_id,
                    "X-Signature": sig,
                }
                started = time.perf_counter()
                try:
                    resp = await client.post(url, content=body.encode(), headers=headers)
                except httpx.HTTPError:
                    other += 1
                    continue
                latencies.append(time.perf_counter() - started)
                if resp.status_code == 202:
                    accepted += 1
                else:
                    other += 1

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        seconds = time.monotonic() - began
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "accepted": accepted,
        "other": other,
        "seconds": seconds,
        "rate": accepted / seconds,
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
    }


def load(url: str, data: Path, *, duration: float, connections: int) -> dict[str, Any]:
    if shutil.which("wrk"):
        return run_wrk(url, data, duration=duration, connections=connections)
    lines = data.read_text().splitlines()
    return asyncio.run(_python_load(url, lines, duration=duration, connections=connections))


@contextmanager
def database(backend: str, tmp: Path) -> Iterator[str | None]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'bench.db'}"
        return
    from sqlalchemy import create_engine, text

    name = f"dealflow_bench_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        print(f"postgres: skipped ({type(exc).__name__}: {str(exc).splitlines()[0]})")
        yield None
        return
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
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


def count_rows(url: str, source_id: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM events WHERE source_id = :s"), {"s": source_id}
                ).scalar_one()
            )
    finally:
        engine.dispose()


def bench_backend(backend: str, args: argparse.Namespace, tmp: Path, data: Path) -> dict | None:
    """Both servers up side by side (the idle one costs nothing); the measured runs alternate
    no-op, ingress, no-op, ingress ... so that a noisy neighbour hits both alike; the median
    round of each is reported."""
    with database(backend, tmp) as url:
        if url is None:
            return None
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        noop_port = free_port()
        noop_cmd = [
            sys.executable, "-m", "uvicorn", "noop_app:app", "--app-dir", str(BENCH),
            "--host", "127.0.0.1", "--port", str(noop_port), "--log-level", "warning",
            "--no-access-log",
        ]  # fmt: skip
        port = free_port()
        api_env = {
            **env,
            "DEALFLOW_DATABASE_URL": url,
            "DEALFLOW_API_PORT": str(port),
            "DEALFLOW_ADMIN_TOKEN": ADMIN,
            "DEALFLOW_SECRET_KEY": "bench-secret-key-0123456789",
            "DEALFLOW_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",  # down: ingress alone
            "DEALFLOW_DATA_DIR": str(tmp / f"data-{backend}"),
            "DEALFLOW_METRICS_PORT": "0",
            "DEALFLOW_GLOBAL_RATE_PER_SECOND": "1000000",
            "DEALFLOW_GLOBAL_RATE_BURST": "1000000",
            "DEALFLOW_LOG_LEVEL": args.log_level,
        }
        api_cmd = [sys.executable, "-m", "dealflow.cli", "api"]
        noop_log, api_log = tmp / f"noop-{backend}.log", tmp / f"api-{backend}.log"
        with (
            server(noop_cmd, env, noop_port, noop_log) as noop_base,
            server(api_cmd, api_env, port, api_log) as base,
        ):
            auth = {"Authorization": f"Bearer {ADMIN}"}
            sources = []
            for n in range(args.rounds + 1):
                resp = httpx.post(
                    base + "/v1/sources",
                    json={"name": f"bench {n}", "scheme": "hmac", "secret": SECRET},
                    headers=auth,
                )
                resp.raise_for_status()
                sources.append(resp.json()["id"])
            noop_url = f"{noop_base}/v1/webhooks/src_noop"
            warm = min(2.0, args.duration)
            load(noop_url, data, duration=warm, connections=args.connections)
            load(
                f"{base}/v1/webhooks/{sources[0]}",
                data,
                duration=warm,
                connections=args.connections,
            )
            noops, reals = [], []
            for source_id in sources[1:]:  # a fresh source a round: every delivery is new
                noops.append(
                    load(noop_url, data, duration=args.duration, connections=args.connections)
                )
                reals.append(
                    load(
                        f"{base}/v1/webhooks/{source_id}",
                        data,
                        duration=args.duration,
                        connections=args.connections,
                    )
                )
        accepted = sum(r["accepted"] for r in reals)
        stored = sum(count_rows(url, s) for s in sources[1:])
        return {
            "backend": backend,
            "noop": median(noops),
            "ingress": median(reals),
            "accepted": accepted,
            "stored": stored,
            "rounds": [(n["rate"], r["rate"]) for n, r in zip(noops, reals, strict=True)],
        }


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]


def report(results: list[dict]) -> None:
    print()
    print(
        f"{'backend':<9} {'endpoint':<8} {'accepted/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'non-202':>8}   (median round)"
    )
    for r in results:
        for label in ("noop", "ingress"):
            m = r[label]
            print(
                f"{r['backend']:<9} {label:<8} {m['rate']:>11,.0f} {m['p50_ms']:>8.2f} "
                f"{m['p99_ms']:>8.2f} {m['other']:>8}"
            )
        ratio = r["ingress"]["rate"] / r["noop"]["rate"] if r["noop"]["rate"] else 0.0
        durable = "every 202 is stored" if r["stored"] >= r["accepted"] else "202s LOST"
        rounds = ", ".join(f"{n:,.0f}/{i:,.0f}" for n, i in r["rounds"])
        print(f"{r['backend']:<9} ratio    {ratio:>10.0%}   rounds no-op/ingress: {rounds}")
        print(f"{'':<9} durable  {r['accepted']} answered 202, {r['stored']} rows: {durable}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--requests", type=int, default=100_000, help="pre-signed deliveries")
    parser.add_argument("--log-level", default="INFO", help="the API's DEALFLOW_LOG_LEVEL")
    args = parser.parse_args()
    generator = "wrk -t1" if shutil.which("wrk") else "python (asyncio + httpx)"
    print(
        f"load: {generator}, {args.connections} connections, {args.rounds} x {args.duration:g} s "
        "per endpoint, "
        f"{os.cpu_count()} CPUs, loopback"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="dealflow-bench-") as tmpdir:
        tmp = Path(tmpdir)
        data = tmp / "requests.txt"
        write_requests(data, args.requests)
        for backend in args.backends.split(","):
            result = bench_backend(backend.strip(), args, tmp, data)
            if result is not None:
                results.append(result)
    report(results)
    return 0 if all(r["stored"] >= r["accepted"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
