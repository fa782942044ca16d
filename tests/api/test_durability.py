"""A 202 is never lost: events accepted while Temporal is down are processed once it is back
(exactly once), and a ``kill -9`` of the API right after its 202s loses none of them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import bindparam, text
from temporalio.testing import WorkflowEnvironment

from store.db import Database
from tests.api.conftest import (
    ADMIN_TOKEN,
    SECRET_KEY,
    Api,
    deal_created,
    dumps,
    make_settings,
    native,
    running_api,
    sign_hmac,
    uid,
    unused_address,
    wait_for,
)
from tests.conftest import free_port, start_dev_server

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def live(database_url: str, client: Any, address: str, data_dir: Path) -> AsyncIterator[Api]:
    """An API pointed at a running Temporal, with an in-process worker."""
    from worker import build_worker

    settings = make_settings(database_url, data_dir, address)
    db = Database(settings.effective_database_url)
    try:
        async with build_worker(client, db, settings):
            with running_api(settings) as running:
                yield running
    finally:
        db.dispose()


def statuses(db: Database, event_ids: list[str]) -> dict[str, tuple[str, int]]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, status, attempts FROM events WHERE id IN :ids").bindparams(
                bindparam("ids", expanding=True)
            ),
            {"ids": event_ids},
        ).all()
    return {r[0]: (r[1], r[2]) for r in rows}


def all_settled(db: Database, event_ids: list[str]) -> bool:
    found = statuses(db, event_ids)
    return len(found) == len(event_ids) and all(
        s in ("processed", "failed") for s, _ in found.values()
    )


async def post_many(api: Api, src: dict, payloads: list[dict], concurrency: int = 16) -> list:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=api.base_url, timeout=60) as client:

        async def one(payload: dict) -> httpx.Response:
            body = dumps(payload)
            headers = {
                **sign_hmac(src["secret"], body, uid("dlv")),
                "Content-Type": "application/json",
            }
            async with sem:
                return await client.post(f"/v1/webhooks/{src['id']}", content=body, headers=headers)

        return await asyncio.gather(*(one(p) for p in payloads))


async def test_accepted_while_temporal_is_down_then_processed(
    api: Api, database_url: str, dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    src = api.create_source("hmac")
    pipeline_id = api.create_pipeline()
    deal_id = uid("deal")
    payloads = [
        deal_created(deal_id, pipeline_id),
        native("deal.activity", deal_id=deal_id, kind="call"),
        native("deal.updated", deal_id=deal_id, value=5000),
        native("deal.stage_change_requested", deal_id=deal_id, to_stage="qualified"),
    ]
    answers = await post_many(api, src, payloads, concurrency=1)
    assert [a.status_code for a in answers] == [202] * 4
    ids = [a.json()["event_id"] for a in answers]
    await asyncio.sleep(1.0)  # the relay had its chances: with no Temporal nothing moved
    assert {api.event(i)["status"] for i in ids} == {"accepted"}
    metrics = api.http.get("/metrics").text
    pending = [
        ln for ln in metrics.splitlines() if ln.startswith("dealflow_events_pending_handoff")
    ]
    assert pending and float(pending[0].split()[-1]) >= 4

    target = dev_env.client.service_client.config.target_host
    async with live(database_url, dev_env.client, target, tmp_path) as up:
        await wait_for(lambda: all_settled(up.db, ids))
        events = [up.event(i) for i in ids]
        assert [e["status"] for e in events] == ["processed"] * 4, events
        assert all(e["processed_at"] and e["attempts"] == 1 for e in events)
        deal = up.admin("GET", f"/v1/deals/{deal_id}")
        assert deal.status_code == 200, deal.text
        assert deal.json()["stage"] == "qualified" and deal.json()["value"] == 5000
    described = await dev_env.client.get_workflow_handle(f"deal-{deal_id}").describe()
    assert described.id == f"deal-{deal_id}"


async def test_chaos_500_while_temporal_is_down(database_url: str, tmp_path: Path) -> None:
    """Temporal is not running at all when 500 webhooks come in; it starts afterwards, on the
    address the API has been trying all along, and every event is processed exactly once."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    settings = make_settings(database_url, tmp_path / "api", address)
    deals = 10
    per_deal = 50
    with running_api(settings) as api:
        src = api.create_source("hmac")
        pipeline_id = api.create_pipeline()
        deal_ids = [uid("deal") for _ in range(deals)]
        # The creations first (senders do not promise an order; a deal must exist before its
        # activities apply), then 490 activities, 16 at a time.
        answers = await post_many(api, src, [deal_created(d, pipeline_id) for d in deal_ids])
        activities = [
            native("deal.activity", deal_id=d, kind=f"call-{n}")
            for n in range(per_deal - 1)
            for d in deal_ids
        ]
        answers += await post_many(api, src, activities)
        assert Counter(a.status_code for a in answers) == {202: deals * per_deal}
        ids = [a.json()["event_id"] for a in answers]
        assert {s for s, _ in statuses(api.db, ids).values()} == {"accepted"}

        env = await start_dev_server(port)
        try:
            from worker import build_worker

            async with build_worker(env.client, api.db, settings):
                await wait_for(lambda: all_settled(api.db, ids), within=240)
        finally:
            await env.shutdown()

        found = statuses(api.db, ids)
        with api.db.engine.connect() as conn:
            errors = conn.execute(
                text("SELECT last_error FROM events WHERE status = 'failed' AND source_id = :s"),
                {"s": src["id"]},
            ).all()
        assert not errors, errors[:5]
        assert Counter(s for s, _ in found.values()) == {"processed": deals * per_deal}
        assert Counter(a for _, a in found.values()) == {1: deals * per_deal}
        with api.db.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT deal_id, count(*) FROM deal_history WHERE kind = 'activity' "
                    "AND deal_id IN :d GROUP BY deal_id"
                ).bindparams(bindparam("d", expanding=True)),
                {"d": deal_ids},
            ).all()
        assert dict(rows) == {d: per_deal - 1 for d in deal_ids}


async def test_redelivery_after_processing_is_a_duplicate(
    api: Api, database_url: str, dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    target = dev_env.client.service_client.config.target_host
    async with live(database_url, dev_env.client, target, tmp_path) as up:
        src = up.create_source("hmac")
        pipeline_id = up.create_pipeline()
        deal_id = uid("deal")
        body = dumps(deal_created(deal_id, pipeline_id))
        headers = sign_hmac(src["secret"], body, "same-delivery")
        first = up.webhook(src["id"], body, headers)
        assert first.status_code == 202
        event_id = first.json()["event_id"]
        await wait_for(lambda: all_settled(up.db, [event_id]))
        again = up.webhook(src["id"], body, headers)
        assert again.status_code == 200
        assert again.json() == {"event_id": event_id, "status": "duplicate"}
        assert up.event(event_id)["attempts"] == 1


def test_kill_9_loses_no_accepted_event(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DEALFLOW_DATABASE_URL": database_url,
        "DEALFLOW_API_PORT": str(port),
        "DEALFLOW_ADMIN_TOKEN": ADMIN_TOKEN,
        "DEALFLOW_SECRET_KEY": SECRET_KEY,
        "DEALFLOW_TEMPORAL_ADDRESS": unused_address(),
        "DEALFLOW_DATA_DIR": str(tmp_path),
        "DEALFLOW_METRICS_PORT": "0",
        "DEALFLOW_LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dealflow.cli", "api"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            for _ in range(600):
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None:
                    pytest.fail(f"the API exited: {(tmp_path / 'api.log').read_text()[-2000:]}")
                time.sleep(0.05)
            auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            src = client.post(
                "/v1/sources", json={"name": "k", "scheme": "hmac"}, headers=auth
            ).json()

            def send(_: int) -> str | None:
                body = dumps(deal_created())
                headers = {
                    **sign_hmac(src["secret"], body, uid("dlv")),
                    "Content-Type": "application/json",
                }
                resp = client.post(f"/v1/webhooks/{src['id']}", content=body, headers=headers)
                return resp.json()["event_id"] if resp.status_code == 202 else None

            with ThreadPoolExecutor(16) as pool:
                accepted = [e for e in pool.map(send, range(400)) if e]
    finally:
        proc.send_signal(signal.SIGKILL)  # right after the last 202: no clean shutdown
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(accepted) == 400
    db = Database(database_url)
    try:
        found = statuses(db, accepted)
    finally:
        db.dispose()
    assert set(found) == set(accepted)
    assert {s for s, _ in found.values()} == {"accepted"}
