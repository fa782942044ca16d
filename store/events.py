"""The event store: accepted webhooks, durably, with (source, delivery id) unique."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import select, update

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


def mark_queued(db: Database, event_ids: list[str], at: datetime) -> None:
    """The relay handed these to Temporal; only events still ``accepted`` move to ``queued``."""
    if not event_ids:
        return
    with db.session() as session:
        session.execute(
            update(Event)
            .where(Event.id.in_(event_ids), Event.status == "accepted")  # type: ignore[attr-defined]
            .values(status="queued", queued_at=at)
        )
        session.commit()
