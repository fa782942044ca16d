"""The event store: accepted webhooks, durably, with (source, delivery id) unique."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import select, update

from store import links
from store.db import Database
from store.models import Event

EVENTS = Event.__table__  # type: ignore[attr-defined]


@dataclass
class NewEvent:
    id: str
    source_id: str
    delivery_id: str
    type: str
    status: str
    deal_id: str | None
    payload: dict[str, Any]
    raw_body: bytes
    headers: dict[str, str]
    body_sha256: str
    received_at: datetime

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source_id": self.source_id,
            "delivery_id": self.delivery_id,
            "type": self.type,
            "status": self.status,
            "attempts": 0,
            "deal_id": self.deal_id,
            "payload": self.payload,
            "raw_body": self.raw_body,
            "headers": self.headers,
            "body_sha256": self.body_sha256,
            "received_at": self.received_at,
        }


COLUMNS = (
    "id",
    "source_id",
    "delivery_id",
    "type",
    "status",
    "attempts",
    "deal_id",
    "payload",
    "raw_body",
    "headers",
    "body_sha256",
    "received_at",
)
_JSON = {"payload", "headers"}


ROWS_PER_STATEMENT = 200  # 12 parameters a row: well under SQLite's 32,766


@lru_cache(maxsize=64)
def _insert_sql(dialect: str, rows: int) -> str:
    """One multi-row INSERT straight to the DB-API, skipping SQLAlchemy's per-row processing
    (this is the ingress hot path): a single statement for the whole batch means one round trip
    and one GIL hand-off instead of one per row. Conflicts on (source, delivery) are left alone."""
    if dialect == "postgresql":
        one = "(" + ", ".join("CAST(%s AS json)" if c in _JSON else "%s" for c in COLUMNS) + ")"
    else:
        one = "(" + ", ".join("?" for _ in COLUMNS) + ")"
    return (
        f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES {', '.join([one] * rows)} "
        "ON CONFLICT (source_id, delivery_id) DO NOTHING"
    )


def _params(ev: NewEvent, dialect: str) -> tuple[Any, ...]:
    at = ev.received_at.astimezone(UTC)
    return (
        ev.id,
        ev.source_id,
        ev.delivery_id,
        ev.type,
        ev.status,
        0,
        ev.deal_id,
        orjson.dumps(ev.payload).decode(),
        ev.raw_body,
        orjson.dumps(ev.headers).decode(),
        ev.body_sha256,
        # As UTCDateTime stores it: naive UTC text on SQLite, timestamptz on PostgreSQL.
        at if dialect == "postgresql" else at.strftime("%Y-%m-%d %H:%M:%S.%f"),
    )


def accept_many(db: Database, events: list[NewEvent]) -> dict[str, tuple[str, bool]]:
    """Store events in one transaction. Returns, per new event id, the stored event id and
    whether it was a duplicate (then it is the first delivery's id).

    One multi-row ``INSERT ... ON CONFLICT DO NOTHING``; only when fewer rows than sent
    were inserted (a duplicate delivery) are the batch's deliveries looked up."""
    result: dict[str, tuple[str, bool]] = {}
    if not events:
        return result
    # Within one batch the same delivery may come twice: keep the first.
    firsts: dict[tuple[str, str], NewEvent] = {}
    for ev in events:
        firsts.setdefault((ev.source_id, ev.delivery_id), ev)
    dialect = db.dialect
    stored: dict[tuple[str, str], str]
    with db.engine.begin() as conn:
        rows = [_params(ev, dialect) for ev in firsts.values()]
        inserted = 0
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            chunk = rows[start : start + ROWS_PER_STATEMENT]
            flat = tuple(value for row in chunk for value in row)
            inserted += conn.exec_driver_sql(_insert_sql(dialect, len(chunk)), flat).rowcount
        if inserted == len(rows):
            stored = {key: ev.id for key, ev in firsts.items()}
        else:
            stored = _lookup(conn, list(firsts))
            missing = [key for key in firsts if key not in stored]
            if missing:  # neither inserted nor found: never answer 202 for it
                raise RuntimeError(f"{len(missing)} deliveries were neither stored nor found")
        # The deal links new events declare, in their transaction (a duplicate declares none).
        links.write(
            conn,
            [
                row
                for key, ev in firsts.items()
                if ev.status == "accepted" and stored[key] == ev.id
                for row in links.declared(ev.id, ev.deal_id, ev.payload, ev.received_at)
            ],
        )
    for ev in events:
        first = stored[(ev.source_id, ev.delivery_id)]
        result[ev.id] = (first, first != ev.id)
    return result


def _lookup(conn: Any, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The stored event id of each (source, delivery id)."""
    stored: dict[tuple[str, str], str] = {}
    for start in range(0, len(keys), 200):
        chunk = keys[start : start + 200]
        for source_id in {k[0] for k in chunk}:
            ids = [k[1] for k in chunk if k[0] == source_id]
            found = conn.execute(
                select(EVENTS.c.id, EVENTS.c.delivery_id).where(
                    EVENTS.c.source_id == source_id, EVENTS.c.delivery_id.in_(ids)
                )
            ).all()
            for event_id, delivery_id in found:
                stored[(source_id, delivery_id)] = event_id
    return stored


def claim(db: Database, limit: int, now: datetime, lease: timedelta) -> list[dict[str, Any]]:
    """Claim the oldest events waiting for the relay: ``accepted`` ones, and ``queued`` ones
    whose claim is older than ``lease`` (their relay died before handing them over). One
    conditional UPDATE: two relays (API processes) never claim the same event at once, so
    each event is sent to Temporal once. Returns the claimed events' handoff columns, oldest
    first."""
    c = EVENTS.c
    cutoff = now - lease
    waiting = (c.status == "accepted") | ((c.status == "queued") & (c.queued_at < cutoff))
    with db.engine.connect() as conn:  # a read first: an idle relay takes no write lock
        if conn.execute(select(c.id).where(waiting).limit(1)).first() is None:
            return []
    candidates = select(c.id).where(waiting).order_by(c.received_at, c.id).limit(limit)
    if db.dialect == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    statement = (
        update(EVENTS)
        .where(c.id.in_(candidates.scalar_subquery()), waiting)
        .values(status="queued", queued_at=now)
        .returning(c.id, c.source_id, c.type, c.deal_id, c.payload, c.received_at, c.replays)
    )
    with db.engine.begin() as conn:
        rows = [dict(row._mapping) for row in conn.execute(statement)]
    rows.sort(key=lambda r: (r["received_at"], r["id"]))
    return rows


def mark_processing(db: Database, event_ids: list[str]) -> None:
    """The relay handed these to their deal workflows: ``queued`` → ``processing`` (an event
    whose outcome the workflow recorded meanwhile keeps it)."""
    _move(db, event_ids, "queued", "processing")


def release(db: Database, event_ids: list[str]) -> None:
    """Claimed events the relay could not hand over go back to ``accepted`` for the next pass."""
    _move(db, event_ids, "queued", "accepted")


def _move(db: Database, event_ids: list[str], before: str, after: str) -> None:
    if not event_ids:
        return
    c = EVENTS.c
    with db.engine.begin() as conn:
        for start in range(0, len(event_ids), 500):
            chunk = event_ids[start : start + 500]
            conn.execute(
                update(EVENTS).where(c.id.in_(chunk), c.status == before).values(status=after)
            )
