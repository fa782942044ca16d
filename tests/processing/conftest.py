"""Fixtures for event processing: a task queue per test (for ``run_worker`` of tests/conftest.py,
a real worker from ``worker.build_worker``), and a local fake integration that fails N times,
then succeeds."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@pytest.fixture
def task_queue() -> str:
    return f"proc-{uuid.uuid4().hex[:10]}"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        server: Any = self.server
        with server.lock:
            server.hits += 1
            status = server.script.pop(0) if server.script else server.status
            server.received.append(
                {"headers": dict(self.headers), "body": json.loads(raw or b"{}"), "status": status}
            )
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class FakeIntegration:
    """Answers the statuses in ``script`` one request at a time, then ``status``."""

    def __init__(self, script: list[int] | None = None, status: int = 200) -> None:
        self.server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.lock = threading.Lock()
        self.server.hits = 0
        self.server.script = list(script or [])
        self.server.status = status
        self.server.received = []
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    @property
    def hits(self) -> int:
        return int(self.server.hits)

    @property
    def received(self) -> list[dict[str, Any]]:
        return list(self.server.received)

    def answer(self, status: int) -> None:
        with self.server.lock:
            self.server.status = status

    def __enter__(self) -> FakeIntegration:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_integration() -> Iterator[type[FakeIntegration]]:
    yield FakeIntegration


from tests.api.conftest import live_api  # noqa: E402, F401  (the real API, pointed at dev_env)
