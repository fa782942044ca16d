"""With DEALFLOW_REDIS_URL, every API process shares one token bucket per source (real Redis
on 127.0.0.1:6379, two real API servers on the same database)."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from tests.api.conftest import (
    assert_problem,
    deal_created,
    dumps,
    make_settings,
    running_api,
    sign_hmac,
    uid,
    unused_address,
)


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379")


def test_two_api_processes_share_a_source_rate_limit(database_url: str, tmp_path: Path) -> None:
    redis_url = "redis://127.0.0.1:6379/0"
    settings = [
        make_settings(database_url, tmp_path / name, unused_address(), redis_url=redis_url)
        for name in ("a", "b")
    ]
    with running_api(settings[0]) as a, running_api(settings[1]) as b:
        src = a.create_source(
            "hmac",
            name=f"shared {uuid.uuid4().hex[:6]}",
            rate_limit={"per_second": 0.01, "burst": 4},
        )

        def send(api):  # type: ignore[no-untyped-def]
            body = dumps(deal_created())
            return api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid("e")))

        statuses = [send(api).status_code for api in (a, b, a, b)]
        assert statuses == [202, 202, 202, 202]
        # The bucket of four is spent across both processes: each now refuses.
        for api in (a, b):
            problem = assert_problem(resp := send(api), 429)
            assert int(resp.headers["Retry-After"]) >= 1
            assert "rate limit" in problem["detail"]
        assert a.stored(src["id"]) == 4


def test_auth_failures_counted_across_processes_block_the_source(
    database_url: str, tmp_path: Path
) -> None:
    redis_url = "redis://127.0.0.1:6379/0"
    settings = [
        make_settings(
            database_url,
            tmp_path / name,
            unused_address(),
            redis_url=redis_url,
            auth_failure_limit=6,
        )
        for name in ("a", "b")
    ]
    with running_api(settings[0]) as a, running_api(settings[1]) as b:
        src = a.create_source("hmac", name=f"grind {uuid.uuid4().hex[:6]}")
        body = dumps(deal_created())
        bad = sign_hmac("not-the-secret-0123456789", body, uid("e"))
        for api in (a, b, a, b, a, b):
            assert_problem(api.webhook(src["id"], body, bad), 401)
        good = sign_hmac(src["secret"], body, uid("e"))
        # Blocked for both processes (the source cache of the other one may lag by its TTL).
        assert_problem(b.webhook(src["id"], body, good), 403)
