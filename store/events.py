"""The event store: accepted webhooks, durably, with (source, delivery id) unique."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from store.db import Database
from store.models import Event
from store.upsert import insert_ignore


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


def accept_many(db: Database, events: list[NewEvent]) -> dict[str, tuple[str, bool]]:
    """Store events in one transaction. Returns, per new event id, the stored event id and
    whether it was a duplicate (then it is the first delivery's id)."""
    result: dict[str, tuple[str, bool]] = {}
    if not events:
        return result
    with db.session() as session:
        # Within one batch the same delivery may come twice: keep the first.
        firsts: dict[tuple[str, str], NewEvent] = {}
        for ev in events:
            firsts.setdefault((ev.source_id, ev.delivery_id), ev)
        insert_ignore(
            session, Event, [ev.row() for ev in firsts.values()], ["source_id", "delivery_id"]
        )
        session.commit()
        keys = list(firsts)
        stored: dict[tuple[str, str], str] = {}
        for start in range(0, len(keys), 200):
            chunk = keys[start : start + 200]
            for source_id in {k[0] for k in chunk}:
                ids = [k[1] for k in chunk if k[0] == source_id]
                rows = session.execute(
                    select(Event.id, Event.delivery_id).where(
                        Event.source_id == source_id,  # type: ignore[arg-type]
                        Event.delivery_id.in_(ids),  # type: ignore[attr-defined]
                    )
                ).all()
                for event_id, delivery_id in rows:
                    stored[(source_id, delivery_id)] = event_id
    for ev in events:
        first = stored.get((ev.source_id, ev.delivery_id), ev.id)
        result[ev.id] = (first, first != ev.id)
    return result


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
