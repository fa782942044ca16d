"""The real API under a real uvicorn server (real HTTP) on the real databases, Temporal "down".

Pipelines, versions, simulation and metrics need no Temporal: the server's Temporal address is
an unused port. One server per database backend (``database_url`` is parametrized).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from api.app import create_app
from dealflow.settings import Settings
from store.db import Database
from tests.conftest import free_port
from tests.servers import ServerThread

ADMIN_TOKEN = "dfa_pipelines_admin_token_0123456789"
SECRET_KEY = "pipelines-test-secret-key-0123456789"


@dataclass
class Api:
    http: httpx.Client
    db: Database
    keys: dict[str, str]

    def call(self, method: str, path: str, *, as_: str = "admin", **kw: Any) -> httpx.Response:
        token = ADMIN_TOKEN if as_ == "admin" else self.keys[as_]
        return self.http.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.call("POST", "/v1/pipelines", json=body)
        assert resp.status_code == 201, resp.text
        return resp.json()


@pytest.fixture(scope="session")
def papi(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        data_dir=tmp_path_factory.mktemp("pipelines-data"),
        admin_token=ADMIN_TOKEN,
        secret_key=SECRET_KEY,
        temporal_address=f"127.0.0.1:{free_port()}",
        task_queue=f"pipelines-{uuid.uuid4().hex[:8]}",
        metrics_port=0,
        log_format="text",
    )
    server = ServerThread(create_app(settings), free_port())
    server.start()
    db = Database(database_url)
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{server.server.config.port}", timeout=30
        ) as http:
            api = Api(http=http, db=db, keys={})
            for role in ("viewer", "approver"):
                resp = api.call(
                    "POST",
                    "/v1/api-keys",
                    json={
                        "name": f"{role} key",
                        "role": role,
                        "subject": f"{role}-{uuid.uuid4().hex[:6]}",
                    },
                )
                assert resp.status_code == 201, resp.text
                api.keys[role] = resp.json()["key"]
            yield api
    finally:
        server.stop()
        db.dispose()
