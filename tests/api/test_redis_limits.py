"""With DEALFLOW_REDIS_URL, every API process shares one token bucket per source (real Redis
on 127.0.0.1:6379, two real API servers on the same database)."""

from __future__ import annotations

import socket
import time
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


def test_the_auth_failure_window_is_on_redis_clock_not_the_hosts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two API processes, one on a host whose clock is an hour behind: their failures fall in
    one window (a host-clock window let the other process prune the slow one's as old)."""
    from api.ingress.redis_limits import RedisLimiter

    key = f"auth-fail-test:{uuid.uuid4().hex}"
    on_time, behind = (RedisLimiter("redis://127.0.0.1:6379/0") for _ in range(2))
    real_time = time.time
    assert not on_time.auth_failure(key, limit=3, window_s=60)
    monkeypatch.setattr(time, "time", lambda: real_time() - 3600)
    assert not behind.auth_failure(key, limit=3, window_s=60)
    monkeypatch.setattr(time, "time", real_time)
    assert on_time.auth_failure(key, limit=3, window_s=60), "three failures within the window"
    on_time.client.delete(on_time.prefix + key)
