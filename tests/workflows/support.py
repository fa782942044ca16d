"""Helpers for the deal workflow tests: pipelines in the database, deals started like the relay."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlmodel import select
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from domain.events import DealEvent
from domain.pipeline import PipelineSpec
from store.db import Database
from store.models import Deal, DealHistory, Pipeline, PipelineVersion
from workflows.messages import DealInput, EventBatch


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def create_pipeline(db: Database, spec: dict[str, Any], *, test_mode: bool = False) -> str:
    """Insert a pipeline and its first version, active, as the API does."""
    pipeline_id = new_id("pip")
    stored = PipelineSpec.model_validate(
        {
            "name": "Sales",
            "type": "sales",
            "currency": "USD",
            "probability_mode": "stage",
            **spec,
        }
    ).model_dump(mode="json")
    with db.session() as session:
        session.add(
            Pipeline(
                id=pipeline_id,
                name=stored["name"],
                current_version=1,
                active_version=1,
                status="active",
                test_mode=test_mode,
            )
        )
        session.add(PipelineVersion(pipeline_id=pipeline_id, version=1, spec=stored))
        session.commit()
    return pipeline_id


def event(deal_id: str, type_: str, event_id: str | None = None, **data: Any) -> DealEvent:
    return DealEvent(
        event_id=event_id or new_id("evt"),
        type=type_,  # type: ignore[arg-type]
        data={"deal_id": deal_id, **data},
        source_id="src_test",
        received_at=datetime.now(UTC),
    )


def created(deal_id: str, pipeline_id: str, **data: Any) -> DealEvent:
    base = {"pipeline_id": pipeline_id, "title": "Acme", "value": 5000, "currency": "USD"}
    return event(deal_id, "deal.created", **{**base, **data})


async def send(
    client: Client, task_queue: str, deal_id: str, events: list[DealEvent]
) -> WorkflowHandle:
    """What the relay does: signal-with-start of ``deal-{id}`` with one batch of events."""
    handle = await client.start_workflow(
        "DealWorkflow",
        DealInput(deal_id=deal_id),
        id=f"deal-{deal_id}",
        task_queue=task_queue,
        start_signal="events",
        start_signal_args=[EventBatch(events=events)],
    )
    STARTED.setdefault(task_queue, {})[handle.id] = handle
    return handle


STARTED: dict[str, dict[str, WorkflowHandle]] = {}
"""The deal workflows each task queue's test started, to terminate when its worker stops (an
open deal's timers would otherwise hold up time skipping in later tests)."""


async def terminate_started(task_queue: str) -> None:
    for handle in STARTED.pop(task_queue, {}).values():
        try:
            await handle.terminate("test finished")
        except RPCError:
            pass  # already completed


def deal_row(db: Database, deal_id: str) -> Deal | None:
    with db.session() as session:
        return session.get(Deal, deal_id)


def history(db: Database, deal_id: str, kind: str | None = None) -> list[DealHistory]:
    with db.session() as session:
        query = select(DealHistory).where(DealHistory.deal_id == deal_id)
        if kind is not None:
            query = query.where(DealHistory.kind == kind)
        return list(session.exec(query.order_by(DealHistory.seq)).all())  # type: ignore[arg-type]


async def eventually(check: Callable[[], Any], what: str, tries: int = 400) -> Any:
    """Poll ``check`` (a bounded number of times) until it returns something truthy."""
    for _ in range(tries):
        result = await asyncio.to_thread(check)
        if result:
            return result
        await asyncio.sleep(0.025)
    raise AssertionError(f"gave up waiting for {what}")


class Recorder(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.received.append(  # type: ignore[attr-defined]
            {"path": self.path, "headers": dict(self.headers), "body": body}
        )
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class HttpRecorder:
    """A local HTTP endpoint that records every POST it gets."""

    def __init__(self, status: int = 200) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        self.server.received = []  # type: ignore[attr-defined]
        self.server.status = status  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    @property
    def received(self) -> list[dict[str, Any]]:
        return self.server.received  # type: ignore[attr-defined,no-any-return]

    def __enter__(self) -> HttpRecorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
