"""The real API under a real uvicorn server (real HTTP), against the real databases.

``api`` is one server per database backend for the whole session, with Temporal "down" (its
address is an unused port), so accepted events stay ``accepted``. ``live_api`` is started by the
tests that need handoff: the same database, pointed at the ``dev_env`` Temporal dev server, with
an in-process worker on a task queue of its own.

The server trusts ``127.0.0.2`` as a reverse proxy: requests sent from 127.0.0.1 are from an
untrusted peer (``X-Forwarded-For`` ignored), requests bound to 127.0.0.2 come "through the proxy".
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from sqlalchemy import text
from standardwebhooks import Webhook

from api.app import create_app
from dealflow.settings import Settings
from store.db import Database
from tests.conftest import free_port
from tests.servers import ServerThread

ADMIN_TOKEN = "dfa_test_admin_token_0123456789"
SECRET_KEY = "test-secret-key-for-the-secret-box"
TRUSTED_PROXY = "127.0.0.2"
SESSION_QUEUE = f"dealflow-api-tests-{uuid.uuid4().hex[:8]}"

STAGES = [
    {"key": "lead", "name": "Lead", "probability": 10},
    {"key": "qualified", "name": "Qualified", "probability": 30},
    {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
    {"key": "lost", "name": "Lost", "probability": 0, "outcome": "lost"},
]


# --------------------------------------------------------------------------- servers


@dataclass
class Api:
    """A running API: its settings, its in-process context and an HTTP client to it."""

    settings: Settings
    server: ServerThread
    base_url: str
    http: httpx.Client
    db: Database
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ctx(self) -> Any:
        return self.server.app.state.ctx

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **kw.pop("headers", {})}
        return self.http.request(method, path, headers=headers, **kw)

    def create_source(self, scheme: str, **body: Any) -> dict[str, Any]:
        body = {"name": f"{scheme} test source", "scheme": scheme, **body}
        resp = self.admin("POST", "/v1/sources", json=body)
        assert resp.status_code == 201, resp.text
        return resp.json()

    def create_pipeline(self) -> str:
        resp = self.admin(
            "POST",
            "/v1/pipelines",
            json={
                "name": f"pipeline {uuid.uuid4().hex[:6]}",
                "type": "sales",
                "currency": "USD",
                "probability_mode": "stage",
                "stages": STAGES,
            },
        )
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    def webhook(
        self,
        source_id: str,
        body: bytes,
        headers: dict[str, str] | list[tuple[str, str]],
        *,
        content_type: str | None = "application/json",
        client: httpx.Client | None = None,
    ) -> httpx.Response:
        pairs = list(headers.items()) if isinstance(headers, dict) else list(headers)
        if content_type is not None:
            pairs.append(("Content-Type", content_type))
        return (client or self.http).post(f"/v1/webhooks/{source_id}", content=body, headers=pairs)

    def event(self, event_id: str) -> dict[str, Any]:
        resp = self.admin("GET", f"/v1/events/{event_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def stored(self, source_id: str) -> int:
        """How many events the events table holds for the source (straight from the DB)."""
        with self.db.engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM events WHERE source_id = :s"), {"s": source_id}
                ).scalar_one()
            )


def insert_deal(db: Database, deal_id: str, pipeline_id: str = "pl_x") -> None:
    """A deal row as a deal workflow would have written it (for read-side tests)."""
    from store.models import Deal

    with db.session() as session:
        session.add(
            Deal(
                deal_id=deal_id,
                pipeline_id=pipeline_id,
                pipeline_version=1,
                stage="lead",
                stage_entered_at=datetime.now(UTC),
                status="open",
                title="t",
            )
        )
        session.commit()


def make_settings(database_url: str, data_dir: Path, temporal_address: str, **kw: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        data_dir=data_dir,
        admin_token=ADMIN_TOKEN,
        secret_key=SECRET_KEY,
        temporal_address=temporal_address,
        task_queue=SESSION_QUEUE,
        trusted_proxies=[f"{TRUSTED_PROXY}/32"],
        metrics_port=0,
        log_format="text",
        **kw,
    )


@contextmanager
def running_api(settings: Settings) -> Iterator[Api]:
    port = free_port()
    server = ServerThread(create_app(settings), port)
    server.start()
    base = f"http://127.0.0.1:{port}"
    db = Database(settings.effective_database_url)
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            yield Api(settings=settings, server=server, base_url=base, http=http, db=db)
    finally:
        server.stop()
        db.dispose()


def unused_address() -> str:
    """A Temporal address nobody listens on: Temporal is "down"."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def api(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The API with Temporal unreachable, one per database backend."""
    settings = make_settings(database_url, tmp_path_factory.mktemp("data"), unused_address())
    with running_api(settings) as running:
        yield running


@pytest.fixture(scope="session")
def proxy_client(api: Api) -> Iterator[httpx.Client]:
    """A client whose connections come from the trusted proxy address (127.0.0.2)."""
    transport = httpx.HTTPTransport(local_address=TRUSTED_PROXY)
    with httpx.Client(base_url=api.base_url, transport=transport, timeout=30) as client:
        yield client


@pytest.fixture
async def live_api(
    live_database_url: str, dev_env: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Api]:
    """The API pointed at the real Temporal dev server, with a worker for the deal workflows
    (on a database of its own: its relay hands over every waiting event)."""
    from worker import build_worker

    target = dev_env.client.service_client.config.target_host
    settings = make_settings(live_database_url, tmp_path_factory.mktemp("live"), target)
    worker = build_worker(dev_env.client, Database(settings.effective_database_url), settings)
    async with worker:
        with running_api(settings) as running:
            yield running


# --------------------------------------------------------------------------- signing
# Independent of domain/signatures.py: the providers' own libraries and documented recipes.


def sign_standard(secret: str, msg_id: str, body: bytes, ts: int | None = None) -> dict[str, str]:
    when = datetime.fromtimestamp(ts if ts is not None else time.time(), UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body),
    }


def sign_stripe(secret: str, body: bytes, ts: int | None = None) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(
        body.decode("utf-8"), secret, timestamp=ts if ts is not None else int(time.time())
    )
    return {"Stripe-Signature": header}


def sign_github(secret: str, body: bytes, delivery: str, event: str) -> dict[str, str]:
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
    digest = hmac.new(secret.encode("utf-8"), msg=body, digestmod=hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": "sha256=" + digest,
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Event": event,
    }


def sign_hmac(secret: str, body: bytes, event_id: str) -> dict[str, str]:
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return {"X-Signature": digest, "X-Event-Id": event_id}


def uid(prefix: str = "d") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def native(event_type: str, **data: Any) -> dict[str, Any]:
    return {"type": event_type, "data": data}


def deal_created(deal_id: str | None = None, pipeline_id: str = "pl_x") -> dict[str, Any]:
    return native(
        "deal.created",
        deal_id=deal_id or uid("deal"),
        pipeline_id=pipeline_id,
        title="Big deal",
        value=1200,
        currency="USD",
    )


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def assert_problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, f"{resp.status_code} {resp.text[:500]}"
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers
    body = resp.json()
    assert body["status"] == status
    assert body["title"] and body["type"] and body["detail"]
    return body


async def wait_for(predicate: Any, *, within: float = 90, every: float = 0.2) -> Any:
    """Poll ``predicate`` (run in a thread) until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting after {within:.0f} s")
        await asyncio.sleep(every)
