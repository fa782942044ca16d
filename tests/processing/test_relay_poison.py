"""A poison event the relay cannot hand over (Temporal refuses it) is dead-lettered after N
attempts instead of blocking its deal; the good events of the same deal go through."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.events import attempts_of
from api.relay import Relay
from store.db import Database
from store.models import Event
from tests.processing.support import event_stub


def row(event_id: str, deal: str, payload: dict, at: datetime) -> Event:
    return event_stub(
        event_id,
        source_id="src_poison",
        status="accepted",
        deal_id=deal,
        payload=payload,
        received_at=at,
    )


@pytest.fixture
def db(own_db: Database) -> Database:
    """A database of its own: the relay hands over every waiting event it finds."""
    return own_db


async def test_a_poison_handoff_is_dead_lettered_after_n_attempts(
    dev_env: WorkflowEnvironment, db: Database
) -> None:
    deal = f"deal_{uuid.uuid4().hex[:10]}"
    now = datetime.now(UTC) - timedelta(days=3650)  # first in the relay's order
    huge = {"deal_id": deal, "fields": {"blob": "x" * (3 * 1024 * 1024)}}  # over the 2 MB limit
    good_id, poison_id = f"evt_g{uuid.uuid4().hex[:8]}", f"evt_p{uuid.uuid4().hex[:8]}"
    with db.session() as session:
        session.add(row(good_id, deal, {"deal_id": deal, "value": 5}, now))
        session.add(row(poison_id, deal, huge, now + timedelta(seconds=1)))
        session.commit()
    queue = f"poison-{uuid.uuid4().hex[:8]}"
    relay = Relay(db, lambda: dev_env.client, task_queue=queue, batch_size=10, max_attempts=3)
    try:
        for attempt in range(1, 4):
            with pytest.raises(RuntimeError) if attempt < 3 else _nothing():
                await relay.run_once()
            with db.session() as session:
                poison = session.get(Event, poison_id)
                good = session.get(Event, good_id)
            assert poison is not None and good is not None
            assert poison.attempts == attempt
            assert good.status == "processing", "the good event of the same deal went through"
        assert poison.status == "dead_lettered"
        assert "handoff" in (poison.last_error or "")
        kinds = [a.kind for a in attempts_of(db, poison_id)]
        assert kinds == ["handoff", "handoff", "handoff", "dead_lettered"]
        assert await relay.run_once() == 0, "nothing blocks the deal any more"
    finally:
        await dev_env.client.get_workflow_handle(f"deal-{deal}").terminate("test over")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False
