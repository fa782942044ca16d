"""End to end: ``dealflow dev`` as a new user runs it — the real Temporal dev server, worker and
uvicorn processes — driven over HTTP with webhooks signed by the ``standardwebhooks`` package."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.conftest import free_port, fresh_pg_database

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


@dataclass
class Stack:
    proc: subprocess.Popen[bytes]
    api: str
    ui: str
    grpc: str
    token: str
    env: dict[str, str]
    log: Path

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.api, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def start_stack(data_dir: Path, database_url: str | None, ports: dict[str, int]) -> Stack:
    token = "dfa_e2e_" + uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEALFLOW_")} | {
        "DEALFLOW_DATA_DIR": str(data_dir),
        "DEALFLOW_API_PORT": str(ports["api"]),
        "DEALFLOW_TEMPORAL_GRPC_PORT": str(ports["grpc"]),
        "DEALFLOW_TEMPORAL_UI_PORT": str(ports["ui"]),
        "DEALFLOW_METRICS_PORT": str(ports["metrics"]),
        "DEALFLOW_ADMIN_TOKEN": token,
        "DEALFLOW_RELAY_INTERVAL": "PT0.1S",
    }
    if database_url:
        env["DEALFLOW_DATABASE_URL"] = database_url
    log = data_dir.parent / f"dev-{ports['api']}.log"
    proc = subprocess.Popen(
        [str(BIN / "dealflow"), "dev"],
        env=env,
        cwd=data_dir.parent,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    stack = Stack(
        proc=proc,
        api=f"http://127.0.0.1:{ports['api']}",
        ui=f"http://127.0.0.1:{ports['ui']}",
        grpc=f"127.0.0.1:{ports['grpc']}",
        token=token,
        env=env,
        log=log,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"dealflow dev exited: {log.read_text()[-3000:]}")
        return httpx.get(f"{stack.api}/readyz", timeout=2).status_code == 200

    _wait(ready, 90, "/readyz 200")
    return stack


def stop_stack(stack: Stack, *, signals: int = 1) -> None:
    """SIGTERM (``signals`` times, as when a whole process group is signalled and make passes
    the signal on as well), then wait for the stack to stop."""
    if stack.proc.poll() is None:
        for n in range(signals):
            if n:
                time.sleep(0.05)
            stack.proc.send_signal(signal.SIGTERM)
        try:
            stack.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            stack.proc.kill()
            raise


@pytest.fixture(scope="module")
def e2e_db(database_url: str) -> Iterator[str | None]:
    """SQLite: the stack's own file under its data dir. PostgreSQL: a database of its own, so
    that the stack's relay does not pick up events other tests left in the shared one."""
    if database_url.startswith("sqlite"):
        yield None
        return
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(scope="module")
def stack_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("e2e")
    ports = {k: free_port() for k in ("api", "grpc", "ui", "metrics")}
    return root / ".dealflow", ports


@pytest.fixture(scope="module")
def stack(stack_dirs: tuple[Path, dict[str, int]], e2e_db: str | None) -> Iterator[Stack]:
    data_dir, ports = stack_dirs
    s = start_stack(data_dir, e2e_db, ports)
    yield s
    stop_stack(s)


PIPELINE = {
    "name": "New product",
    "type": "sales",
    "currency": "EUR",
    "probability_mode": "stage",
    "stages": [
        {"key": "lead", "name": "Lead", "probability": 10, "rotting": "P14D"},
        {"key": "qualified", "name": "Qualified", "probability": 30, "sla": {"target": "PT4H"}},
        {"key": "proposal", "name": "Proposal", "probability": 60, "required_fields": ["budget"]},
        {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
        {"key": "lost", "name": "Lost", "probability": 0, "outcome": "lost"},
    ],
}


def post_webhook(stack: Stack, source: dict[str, Any], event: dict[str, Any]) -> httpx.Response:
    body = json.dumps(event)
    msg_id = f"msg_{uuid.uuid4().hex}"
    signature = Webhook(source["secret"]).sign(msg_id, datetime.now(UTC), body)
    return httpx.post(
        source["ingress_url"],
        content=body.encode(),
        headers={
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(time.time())),
            "webhook-signature": signature,
        },
        timeout=10,
    )


def test_signed_webhooks_drive_a_durable_deal_workflow(stack: Stack) -> None:
    with stack.http() as api:
        assert httpx.get(f"{stack.api}/healthz").json() == {"status": "ok"}
        assert httpx.get(stack.ui, timeout=10).status_code == 200
        assert httpx.get(f"{stack.api}/openapi.json").json()["info"]["title"] == "dealflow"

        pipeline = api.post("/v1/pipelines", json=PIPELINE)
        assert pipeline.status_code == 201, pipeline.text
        pipeline_id = pipeline.json()["id"]
        source = api.post("/v1/sources", json={"name": "web form", "scheme": "standard"})
        assert source.status_code == 201, source.text
        src = source.json()
        assert src["secret"].startswith("whsec_")
        assert "secret" not in api.get(f"/v1/sources/{src['id']}").json()

        deal_id = f"acme-{uuid.uuid4().hex[:8]}"
        created = post_webhook(
            stack,
            src,
            {
                "type": "deal.created",
                "data": {
                    "deal_id": deal_id,
                    "pipeline_id": pipeline_id,
                    "title": "ACME rollout",
                    "value": 12000,
                    "currency": "EUR",
                    "owner": "ana",
                },
            },
        )
        assert created.status_code == 202, created.text
        event_id = created.json()["event_id"]

        deal = _wait(
            lambda: (r := api.get(f"/v1/deals/{deal_id}")).status_code == 200 and r.json(),
            60,
            "the deal in the read model",
        )
        assert deal["stage"] == "lead" and deal["status"] == "open"
        assert api.get(f"/v1/events/{event_id}").json()["status"] == "processed"

        moved = post_webhook(
            stack,
            src,
            {
                "type": "deal.stage_change_requested",
                "data": {"deal_id": deal_id, "to_stage": "qualified"},
            },
        )
        assert moved.status_code == 202
        deal = _wait(
            lambda: (d := api.get(f"/v1/deals/{deal_id}").json())["stage"] == "qualified" and d,
            60,
            "the webhook's stage change",
        )
        assert deal["sla"]["state"] == "ok"

        etag = api.get(f"/v1/deals/{deal_id}").headers["etag"]
        assert api.get(f"/v1/deals/{deal_id}", headers={"If-None-Match": etag}).status_code == 304

        refused = api.post(f"/v1/deals/{deal_id}/transitions", json={"to_stage": "proposal"})
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert any("budget" in e["msg"] for e in refused.json()["errors"])
        ok = api.post(
            f"/v1/deals/{deal_id}/transitions",
            json={"to_stage": "proposal", "fields": {"budget": 5000}},
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["stage"] == "proposal"

        kinds = [h["kind"] for h in api.get(f"/v1/deals/{deal_id}/history").json()["data"]]
        assert kinds.count("stage_changed") == 2

        # Operators filter deals by stage in Temporal (the Web UI uses the same query).
        def listed() -> bool:
            out = subprocess.run(
                [
                    str(BIN / "temporal"),
                    "workflow",
                    "list",
                    "--address",
                    stack.grpc,
                    "--query",
                    f'DealStage="proposal" AND DealId="{deal_id}"',
                    "--output",
                    "json",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            return f"deal-{deal_id}" in out.stdout

        _wait(listed, 30, "the workflow listed by DealStage")
        metrics = httpx.get(f"{stack.api}/metrics").text
        assert 'dealflow_webhooks_received_total{outcome="accepted"' in metrics or (
            "dealflow_webhooks_received_total" in metrics and 'outcome="accepted"' in metrics
        )


def test_roles_are_enforced(stack: Stack) -> None:
    assert httpx.get(f"{stack.api}/v1/pipelines").status_code == 401
    with stack.http() as api:
        viewer = api.post(
            "/v1/api-keys", json={"name": "ops", "role": "viewer", "subject": "olga"}
        ).json()["key"]
    headers = {"Authorization": f"Bearer {viewer}"}
    assert httpx.get(f"{stack.api}/v1/pipelines", headers=headers).status_code == 200
    forbidden = httpx.post(f"{stack.api}/v1/pipelines", json=PIPELINE, headers=headers)
    assert forbidden.status_code == 403
    assert forbidden.json()["status"] == 403


def test_sigterm_stops_everything_and_a_restart_keeps_the_deals(
    stack: Stack, stack_dirs: tuple[Path, dict[str, int]], e2e_db: str | None
) -> None:
    with stack.http() as api:
        before = api.get("/v1/deals").json()["data"]
    assert before, "the first test creates a deal"
    stop_stack(stack, signals=2)
    assert stack.proc.returncode == 0, stack.log.read_text()[-2000:]
    assert "Traceback" not in stack.log.read_text(), stack.log.read_text()[-3000:]
    data_dir, ports = stack_dirs
    leftovers = subprocess.run(["ps", "-eo", "pid,cmd"], capture_output=True, text=True).stdout
    assert str(data_dir) not in leftovers  # the Temporal server (its --db-filename) is gone
    assert f"--port {ports['grpc']}" not in leftovers

    again = start_stack(data_dir, e2e_db, ports)
    try:
        with again.http() as api:
            after = api.get("/v1/deals").json()["data"]
            assert [d["deal_id"] for d in after] == [d["deal_id"] for d in before]
            deal_id = before[0]["deal_id"]
            out = subprocess.run(
                [
                    str(BIN / "temporal"),
                    "workflow",
                    "describe",
                    "--address",
                    again.grpc,
                    "--workflow-id",
                    f"deal-{deal_id}",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.returncode == 0, out.stderr
            moved = api.post(f"/v1/deals/{deal_id}/transitions", json={"to_stage": "won"})
            assert moved.status_code == 200, moved.text
    finally:
        stop_stack(again)
