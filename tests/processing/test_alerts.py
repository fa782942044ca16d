"""Durable alerts: the outbox rows raised with the change that caused them (once per key), the
dispatcher that delivers them to a real HTTP receiver signed the Standard Webhooks way, with
retries, backoff, leases between workers and abandonment; the failure-rate alert all workers
raise together once a window; a dead letter from a real worker; the worker's /metrics.

The dispatcher's clock is a test clock moved by the tests (what is due, the failure-rate
window); nothing waits on the wall clock."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlmodel import col, select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

import activities.events as events_module
from activities.alerts import AlertDispatcher, Alerter
from activities.events import DeadLetterItem, dead_letter, record_handoff_failures, replay
from activities.integrations import Breaker
from dealflow.settings import Settings
from store.db import Database
from store.models import Alert
from tests.conftest import free_port
from tests.processing.support import (
    activity_runs,
    event,
    event_row,
    event_stub,
    new_id,
    store_events,
)
from tests.workflows.support import eventually, send, terminate_started
from workflows.reconcile import SCHEDULE_ID

SECRET = "whsec_" + base64.b64encode(b"alerts-test-secret-0123456789abc").decode()


# --------------------------------------------------------------------------- fixtures


class Clock:
    """The dispatcher's now, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server: Any = self.server
        if server.delay:
            time.sleep(server.delay)
        with server.lock:
            status = server.script.pop(0) if server.script else server.status
            server.requests.append({"raw": raw, "headers": dict(self.headers), "status": status})
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class Receiver:
    """An alert receiver on a real port: answers ``script`` one request at a time, then
    ``status``; keeps each request's raw bytes and headers."""

    def __init__(
        self,
        port: int = 0,
        script: list[int] | None = None,
        status: int = 200,
        delay: float = 0.0,
    ) -> None:
        self.server: Any = ThreadingHTTPServer(("127.0.0.1", port), _Receiver)
        self.server.lock = threading.Lock()
        self.server.script = list(script or [])
        self.server.status = status
        self.server.delay = delay
        self.server.requests = []
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def url_for(port: int) -> str:
        return f"http://127.0.0.1:{port}/alerts"

    @property
    def url(self) -> str:
        return self.url_for(self.server.server_address[1])

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self.server.lock:
            return list(self.server.requests)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {"alert_webhook_secret": SECRET, "outbound_timeout": "PT5S"}
    return Settings(_env_file=None, **{**base, **kw})  # type: ignore[arg-type]


def verified(request: dict[str, Any], secret: str = SECRET) -> dict[str, Any]:
    """The body of a received alert, if its Standard Webhooks signature verifies."""
    body: dict[str, Any] = Webhook(secret).verify(request["raw"], request["headers"])
    return body


def webhook_id(request: dict[str, Any]) -> str:
    headers = {k.lower(): v for k, v in request["headers"].items()}
    return str(headers["webhook-id"])


def alerts(db: Database, **where: Any) -> list[Alert]:
    with db.session() as session:
        query = select(Alert)
        for name, value in where.items():
            query = query.where(getattr(Alert, name) == value)
        return list(session.exec(query.order_by(col(Alert.created_at))).all())


def alert_row(db: Database, alert_id: str) -> Alert:
    with db.session() as session:
        row = session.get(Alert, alert_id)
    assert row is not None
    return row


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def fresh_db(own_db: Database) -> Database:
    """A database of the test's own on each backend: the dispatcher delivers every due row of
    its database and the failure rate looks at every event, so no other test may share it."""
    return own_db


def raise_one(db: Database, clock: Clock | None = None, kind: str = "event.dead_lettered") -> str:
    key = f"{kind}:{uuid.uuid4().hex}"
    alerter = Alerter(clock=clock) if clock else Alerter()
    assert alerter.alert(db, kind, key, f"test alert {key}", {"n": 1})
    [row] = alerts(db, key=key)
    return row.id


# --------------------------------------------------------------------------- raising


def test_an_alert_key_is_raised_once(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    key = f"events.failure_rate:{uuid.uuid4().hex}"
    before = sample("dealflow_alerts_total", kind="events.failure_rate")
    with caplog.at_level("WARNING", logger="dealflow.alerts"):
        assert Alerter().alert(db, "events.failure_rate", key, "too many failures") is True
        assert Alerter().alert(db, "events.failure_rate", key, "too many failures") is False
    assert len(alerts(db, key=key)) == 1
    assert [r.getMessage() for r in caplog.records if "ALERT" in r.getMessage()] == [
        "ALERT events.failure_rate: too many failures"
    ]
    assert sample("dealflow_alerts_total", kind="events.failure_rate") == before + 1


def _stored(db: Database, status: str = "queued") -> str:
    event_id = new_id("evt")
    with db.session() as session:
        session.add(event_stub(event_id, source_id="src_alerts", status=status))
        session.commit()
    return event_id


def test_a_dead_letter_raises_one_alert_per_replay(db: Database) -> None:
    event_id = _stored(db)
    item = DeadLetterItem(event_id=event_id, error="deal does not exist")
    assert dead_letter(db, [item]) == [event_id]
    assert dead_letter(db, [item]) == []  # a retried activity: already a dead letter
    [first] = alerts(db, kind="event.dead_lettered", key=f"event.dead_lettered:{event_id}#0")
    assert first.status == "pending" and first.attempts == 0
    assert first.data == {
        "event_id": event_id,
        "error": "deal does not exist",
        "stage": "processing",
    }
    # Replayed and dead-lettered again: a new occurrence, a new alert.
    replay(db, event_id, "ops")
    assert dead_letter(db, [item]) == [event_id]
    keys = [a.key for a in alerts(db) if a.data.get("event_id") == event_id]
    assert keys == [f"event.dead_lettered:{event_id}#0", f"event.dead_lettered:{event_id}#1"]


def test_a_poison_handoff_raises_an_alert(db: Database) -> None:
    event_id = _stored(db, status="accepted")
    assert record_handoff_failures(db, [event_id], "refused: too big", max_attempts=2) == []
    assert not [a for a in alerts(db) if a.data.get("event_id") == event_id]
    assert record_handoff_failures(db, [event_id], "refused: too big", 2) == [event_id]
    [row] = [a for a in alerts(db) if a.data.get("event_id") == event_id]
    assert row.key == f"event.dead_lettered:{event_id}#0"
    assert row.data["stage"] == "handoff" and "refused: too big" in row.summary


def test_a_breaker_opening_raises_one_alert(db: Database) -> None:
    clock = Clock()
    config = Settings(_env_file=None, breaker_failure_threshold=2)  # type: ignore[call-arg]
    one = Breaker(db, config, Alerter(), clock=clock)
    other = Breaker(db, config, Alerter(), clock=clock)
    name = f"crm-{uuid.uuid4().hex[:6]} http://crm.test/hook"
    one.failure(name, "answered 503")
    assert not [a for a in alerts(db, kind="circuit.opened") if a.data["integration"] == name]
    other.failure(name, "answered 503")  # the second, from another worker: open
    clock.advance(1)
    one.failure(name, "answered 503")  # already open: no new alert
    opened = [a for a in alerts(db, kind="circuit.opened") if a.data["integration"] == name]
    opened_at = clock.now - timedelta(seconds=1)
    assert [a.key for a in opened] == [f"circuit.opened:{name}:{opened_at.isoformat()}"]
    assert opened[0].data["failures"] == 2


# --------------------------------------------------------------------------- delivery


def test_a_delivered_alert_verifies_with_standard_webhooks(fresh_db: Database) -> None:
    alert_id = raise_one(fresh_db)
    with Receiver() as receiver:
        dispatcher = AlertDispatcher(fresh_db, settings(alert_webhook_url=receiver.url))
        try:
            assert dispatcher.deliver_due() == 1
        finally:
            dispatcher.stop()
    [request] = receiver.requests
    body = verified(request)
    assert webhook_id(request) == alert_id == body["id"]
    assert body["type"] == "event.dead_lettered" and body["data"] == {"n": 1}
    assert request["headers"]["Content-Type"] == "application/json"
    # One changed byte, or another secret: it does not verify.
    raw = bytearray(request["raw"])
    raw[raw.index(b"test alert") + 1] ^= 0x01
    with pytest.raises(WebhookVerificationError):
        verified({**request, "raw": bytes(raw)})
    with pytest.raises(WebhookVerificationError):
        verified(request, "whsec_" + base64.b64encode(os.urandom(24)).decode())
    row = alert_row(fresh_db, alert_id)
    assert (row.status, row.attempts, row.last_error) == ("delivered", 1, None)
    assert row.delivered_at is not None


def test_retried_with_backoff_until_the_receiver_is_up_then_delivered_once(
    fresh_db: Database,
) -> None:
    clock = Clock()
    port = free_port()  # nothing listens there yet: the receiver is down
    dispatcher = AlertDispatcher(
        fresh_db, settings(alert_webhook_url=Receiver.url_for(port)), clock=clock
    )
    alert_id = raise_one(fresh_db, clock)
    failed, delivered = sample_deliveries()
    try:
        assert dispatcher.deliver_due() == 1
        row = alert_row(fresh_db, alert_id)
        assert (row.status, row.attempts) == ("pending", 1)
        assert "ConnectError" in (row.last_error or "")
        assert row.next_attempt_at == clock.now + timedelta(seconds=1)
        assert dispatcher.deliver_due() == 0, "not due before its backoff"

        with Receiver(port=port, script=[500]) as receiver:
            clock.advance(1)
            assert dispatcher.deliver_due() == 1
            row = alert_row(fresh_db, alert_id)
            assert (row.status, row.attempts, row.last_error) == ("pending", 2, "answered 500")
            assert row.next_attempt_at == clock.now + timedelta(seconds=2)
            clock.advance(1)
            assert dispatcher.deliver_due() == 0
            clock.advance(1)
            assert dispatcher.deliver_due() == 1
            clock.advance(7200)
            assert dispatcher.deliver_due() == 0, "delivered: never sent again"
    finally:
        dispatcher.stop()
    row = alert_row(fresh_db, alert_id)
    assert (row.status, row.attempts) == ("delivered", 3)
    assert [r["status"] for r in receiver.requests] == [500, 200]
    assert {webhook_id(r) for r in receiver.requests} == {alert_id}
    assert [verified(r)["id"] for r in receiver.requests] == [alert_id, alert_id]
    assert receiver.requests[0]["raw"] == receiver.requests[1]["raw"]
    assert sample_deliveries() == (failed + 2, delivered + 1)


def sample_deliveries() -> tuple[float, float]:
    name = "dealflow_alert_deliveries_total"
    return sample(name, result="failed"), sample(name, result="delivered")


def test_abandoned_after_the_last_attempt_and_the_backoff_is_capped(
    fresh_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    abandoned = sample("dealflow_alert_deliveries_total", result="abandoned")
    with Receiver(status=503) as receiver:
        config = settings(alert_webhook_url=receiver.url, alert_max_attempts=3)
        dispatcher = AlertDispatcher(fresh_db, config, clock=clock)
        alert_id = raise_one(fresh_db, clock)
        try:
            delays = []
            with caplog.at_level("ERROR", logger="dealflow.alerts"):
                for _ in range(5):
                    dispatcher.deliver_due()
                    row = alert_row(fresh_db, alert_id)
                    if row.status == "pending":
                        delays.append((row.next_attempt_at - clock.now).total_seconds())
                    clock.advance(3600)
            # A long-failing alert waits an hour at most between attempts.
            capped = raise_one(fresh_db, clock)
            with fresh_db.engine.begin() as conn:
                conn.execute(text("UPDATE alerts SET attempts = 20 WHERE id = :i"), {"i": capped})
            config.alert_max_attempts = 30
            dispatcher.deliver_due()
        finally:
            dispatcher.stop()
    row = alert_row(fresh_db, alert_id)
    assert (row.status, row.attempts, row.last_error) == ("abandoned", 3, "answered 503")
    assert delays == [1.0, 2.0]
    assert len([r for r in receiver.requests if webhook_id(r) == alert_id]) == 3
    assert sample("dealflow_alert_deliveries_total", result="abandoned") == abandoned + 1
    assert any(
        f"alert {alert_id}" in r.getMessage() and "abandoned" in r.getMessage()
        for r in caplog.records
    )
    capped_row = alert_row(fresh_db, capped)
    assert capped_row.next_attempt_at - clock.now == timedelta(hours=1)


def test_without_a_webhook_the_log_is_the_delivery(fresh_db: Database) -> None:
    alert_id = raise_one(fresh_db)
    dispatcher = AlertDispatcher(fresh_db, settings(alert_webhook_url=None))
    try:
        assert dispatcher.deliver_due() == 1
        assert dispatcher.deliver_due() == 0
        assert dispatcher.count_pending() == 0
    finally:
        dispatcher.stop()
    row = alert_row(fresh_db, alert_id)
    assert row.status == "delivered" and row.attempts == 0


async def test_two_workers_never_send_the_same_alert(fresh_db: Database) -> None:
    ids = {raise_one(fresh_db) for _ in range(30)}
    other = Database(fresh_db.url)  # a second worker process: an engine of its own
    with Receiver(delay=0.01) as receiver:
        config = settings(alert_webhook_url=receiver.url)
        pair = [
            AlertDispatcher(db, config, poll_interval=0.01, batch=5) for db in (fresh_db, other)
        ]
        try:
            for dispatcher in pair:
                dispatcher.start()
            await eventually(
                lambda: all(a.status == "delivered" for a in alerts(fresh_db)),
                "every alert delivered",
                tries=2000,
            )
        finally:
            for dispatcher in pair:
                await asyncio.to_thread(dispatcher.stop)
            other.dispose()
    sent = [webhook_id(r) for r in receiver.requests]
    assert sorted(sent) == sorted(ids), "each alert exactly once"
    assert {a.attempts for a in alerts(fresh_db)} == {1}
    assert {a.claimed_by for a in alerts(fresh_db)} <= {d.name for d in pair}


# --------------------------------------------------------------------------- failure rate


def outcomes(db: Database, at: datetime, **counts: int) -> None:
    """Events with an outcome recorded at ``at`` (minus a second per event), by status."""
    with db.session() as session:
        n = 0
        for status, count in counts.items():
            for _ in range(count):
                n += 1
                event_id = new_id("evt")
                session.add(
                    event_stub(
                        event_id,
                        source_id="src_rate",
                        status=status,
                        processed_at=at - timedelta(seconds=n),
                    )
                )
        session.commit()


RATE = {"alert_failure_window": "PT1M", "alert_failure_min_events": 10, "alert_failure_rate": 0.5}


async def test_the_failure_rate_is_raised_once_a_window_by_all_workers(
    fresh_db: Database,
) -> None:
    clock = Clock()
    window = int(clock.now.timestamp() // 60)
    outcomes(fresh_db, clock.now, processed=8, failed=5, dead_lettered=7)
    outcomes(fresh_db, clock.now - timedelta(minutes=2), dead_lettered=50)  # an older window
    other = Database(fresh_db.url)
    with Receiver() as receiver:
        config = settings(alert_webhook_url=receiver.url, **RATE)
        pair = [
            AlertDispatcher(db, config, clock=clock, poll_interval=0.01, rate_interval=0)
            for db in (fresh_db, other)
        ]
        try:
            for dispatcher in pair:
                dispatcher.start()
            # Each worker checks many times while the window lasts.
            await eventually(
                lambda: all(d.rate_checks >= 10 for d in pair) and receiver.requests,
                "checks by both workers and a delivery",
                tries=2000,
            )
            raised = alerts(fresh_db, kind="events.failure_rate")
            assert [a.key for a in raised] == [f"events.failure_rate:{window}"]
            assert raised[0].data["failed"] == 12 and raised[0].data["total"] == 20
            # The next window, still failing: raised once more.
            clock.advance(60)
            outcomes(fresh_db, clock.now, processed=1, dead_lettered=9)
            checks = [d.rate_checks for d in pair]
            await eventually(
                lambda: (
                    all(d.rate_checks >= c + 10 for d, c in zip(pair, checks, strict=True))
                    and len(receiver.requests) == 2
                ),
                "the next window's alert",
                tries=2000,
            )
        finally:
            for dispatcher in pair:
                await asyncio.to_thread(dispatcher.stop)
            other.dispose()
    keys = [a.key for a in alerts(fresh_db, kind="events.failure_rate")]
    assert keys == [f"events.failure_rate:{window}", f"events.failure_rate:{window + 1}"]
    assert [verified(r)["type"] for r in receiver.requests] == ["events.failure_rate"] * 2


def test_no_failure_rate_alert_below_the_threshold(fresh_db: Database) -> None:
    clock = Clock()
    config = settings(alert_webhook_url=None, **RATE)
    pair = [AlertDispatcher(fresh_db, config, clock=clock) for _ in range(2)]
    # 9 of 20 failed: under 50 %.
    outcomes(fresh_db, clock.now, processed=11, failed=5, dead_lettered=4)
    assert [d.check_failure_rate() for d in pair] == [False, False]
    # All failed, but fewer than the 10 events the rate needs.
    clock.advance(120)
    outcomes(fresh_db, clock.now, dead_lettered=9, queued=30, accepted=30)
    assert [d.check_failure_rate() for d in pair] == [False, False]
    # One more: over the bar.
    outcomes(fresh_db, clock.now, failed=1)
    assert [d.check_failure_rate() for d in pair] == [True, False]
    assert len(alerts(fresh_db, kind="events.failure_rate")) == 1
    for dispatcher in pair:
        dispatcher.stop()


# --------------------------------------------------------------------------- a real worker


async def dead_letter_one(client: Any, task_queue: str, db: Database) -> tuple[str, Any]:
    """An event for a deal that does not exist: the deal workflow dead-letters it."""
    deal = new_id("deal")
    ghost = event(deal, "deal.activity", kind="call")
    store_events(db, [ghost])
    handle = await send(client, task_queue, deal, [ghost])
    await eventually(
        lambda: (
            (row := event_row(db, ghost.event_id)) is not None and row.status == "dead_lettered"
        ),
        "the dead letter",
        tries=1200,
    )
    return ghost.event_id, handle


async def test_a_dead_letter_from_a_real_worker_alerts_once_though_the_activity_is_retried(
    dev_env: WorkflowEnvironment,
    own_sqlite_db: Database,
    run_worker: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = own_sqlite_db
    real = events_module.dead_letter
    calls: list[list[str]] = []

    def lost_after_commit(*args: Any, **kw: Any) -> list[str]:
        newly = real(*args, **kw)
        calls.append(newly)
        if len(calls) == 1:
            raise RuntimeError("worker lost after the commit")
        return newly

    monkeypatch.setattr(events_module, "dead_letter", lost_after_commit)
    with Receiver() as receiver:
        worker = run_worker(
            dev_env.client, db, alert_webhook_url=receiver.url, alert_webhook_secret=SECRET
        )
        async with worker as config:
            event_id, handle = await dead_letter_one(dev_env.client, config.task_queue, db)
            [row] = await eventually(
                lambda: [
                    a for a in alerts(db, kind="event.dead_lettered") if a.status == "delivered"
                ],
                "the alert delivered",
                tries=1200,
            )

            async def retried() -> list[dict[str, Any]] | None:
                runs = await activity_runs(handle, "dead_letter_events")
                return runs if runs and runs[-1]["outcome"] == "completed" else None

            for _ in range(1200):
                if runs := await retried():
                    break
                await asyncio.sleep(0.025)
            else:
                raise AssertionError("dead_letter_events never completed")
    assert calls[0] == [event_id] and calls[1:] == [[]], "the retry dead-lettered nothing new"
    assert [r["attempt"] for r in runs] == [2]
    assert [a.key for a in alerts(db)] == [f"event.dead_lettered:{event_id}#0"]
    assert row.attempts == 1
    [request] = receiver.requests
    assert webhook_id(request) == row.id
    body = verified(request)
    assert body["type"] == "event.dead_lettered" and body["data"]["event_id"] == event_id
    assert "does not exist" in body["summary"]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text_ = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text_)
        for s in family.samples
    }


async def test_the_worker_serves_the_alert_metrics(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    import worker

    client = dev_env.client
    task_queue = f"alerts-{uuid.uuid4().hex[:8]}"
    port = free_port()
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    schedule = client.get_schedule_handle(SCHEDULE_ID)
    try:
        await schedule.describe()
        had_schedule = True
    except RPCError:
        had_schedule = False
    with Receiver() as receiver:
        config = settings(
            database_url=url,
            temporal_address=client.service_client.config.target_host,
            task_queue=task_queue,
            metrics_port=port,
            api_host="127.0.0.1",
            alert_webhook_url=receiver.url,
        )
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(config, stop))
        try:

            def up() -> dict[Any, float] | None:
                try:
                    return scrape(port)
                except httpx.HTTPError:
                    return None

            before = await eventually(up, "the metrics endpoint", tries=1200)
            db = Database(url)
            try:
                event_id, _ = await dead_letter_one(client, task_queue, db)
            finally:
                db.dispose()
            await eventually(lambda: receiver.requests, "the alert delivered", tries=1200)
            after = await asyncio.to_thread(scrape, port)
        finally:
            stop.set()
            await running
            await terminate_started(task_queue)
            if not had_schedule:
                await schedule.delete()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert delta("dealflow_events_total", outcome="dead_lettered") == 1
    assert after[("dealflow_dead_letters", ())] == 1  # this worker's database
    assert delta("dealflow_alerts_total", kind="event.dead_lettered") == 1
    assert delta("dealflow_alert_deliveries_total", result="delivered") >= 1
    assert ("dealflow_alert_deliveries_total", (("result", "abandoned"),)) in after
    assert ("dealflow_alerts_pending", ()) in after
    assert verified(receiver.requests[0])["data"]["event_id"] == event_id
    # Every series is a dealflow_ one (the contract), the process's own included.
    assert {name for name, _ in after if not name.startswith("dealflow_")} == set()
    assert ("dealflow_process_resident_memory_bytes", ()) in after
