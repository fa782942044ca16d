"""Helpers: pipelines with an integration call, events as the relay sends them, history reads,
and native webhooks posted over real HTTP."""

from __future__ import annotations

from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from store.db import Database
from store.models import Event
from tests.api.conftest import Api, dumps, native, sign_hmac, uid, wait_for
from tests.workflows.support import create_pipeline, created, event, history, new_id

STAGES = [
    {"key": "lead", "name": "Lead", "probability": 10},
    {"key": "qualified", "name": "Qualified", "probability": 30},
    {"key": "proposal", "name": "Proposal", "probability": 60},
    {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
]


def integration_pipeline(db: Database, integration: str = "crm") -> str:
    return create_pipeline(
        db,
        {
            "stages": STAGES,
            "automations": [
                {
                    "name": "sync to crm",
                    "trigger": {"on": "stage_entered", "stage": "qualified"},
                    "actions": [{"do": "call_integration", "integration": integration}],
                }
            ],
        },
    )


def plain_pipeline(db: Database) -> str:
    return create_pipeline(db, {"stages": STAGES})


def event_stub(
    event_id: str, *, source_id: str, status: str, type: str = "deal.updated", **cols: Any
) -> Event:
    """An event store row with placeholder delivery fields (delivery id = event id, an empty
    payload and body); ``cols`` set or override other columns (``deal_id``, ``payload``,
    ``received_at``…)."""
    fields: dict[str, Any] = {
        "delivery_id": event_id,
        "payload": {},
        "raw_body": b"{}",
        "headers": {},
        "body_sha256": "0" * 64,
        **cols,
    }
    return Event(id=event_id, source_id=source_id, type=type, status=status, **fields)


def store_events(db: Database, events: list[Any]) -> None:
    """Rows in the event store for events sent straight to a workflow (as if the relay had)."""
    with db.session() as session:
        for e in events:
            session.add(
                event_stub(
                    e.event_id,
                    source_id=e.source_id or "src_test",
                    type=e.type,
                    status="processing",
                    deal_id=e.data.get("deal_id"),
                    payload=e.data,
                    received_at=e.received_at,
                )
            )
        session.commit()


def event_row(db: Database, event_id: str) -> Event | None:
    with db.session() as session:
        return session.get(Event, event_id)


async def activity_runs(handle: WorkflowHandle, activity_type: str) -> list[dict[str, Any]]:
    """Each activity of that type in the workflow's history: the retry policy it was scheduled
    with, when it was scheduled, and the attempt and time of its (last) start."""
    history = await handle.fetch_history()
    scheduled: dict[int, dict[str, Any]] = {}
    for ev in history.events:
        if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = ev.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == activity_type:
                scheduled[ev.event_id] = {
                    "scheduled_at": ev.event_time.ToDatetime(),
                    "retry": attrs.retry_policy,
                    "started_at": None,
                    "attempt": None,
                    "last_failure": None,
                    "outcome": None,
                }
        elif ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = ev.activity_task_started_event_attributes
            run = scheduled.get(attrs.scheduled_event_id)
            if run is not None:
                run["started_at"] = ev.event_time.ToDatetime()
                run["attempt"] = attrs.attempt
                run["last_failure"] = attrs.last_failure if attrs.HasField("last_failure") else None
        elif ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            run = scheduled.get(ev.activity_task_completed_event_attributes.scheduled_event_id)
            if run is not None:
                run["outcome"] = "completed"
        elif ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            attrs = ev.activity_task_failed_event_attributes
            run = scheduled.get(attrs.scheduled_event_id)
            if run is not None:
                run["outcome"] = "failed"
                run["failure"] = attrs.failure
    return list(scheduled.values())


__all__ = [
    "activity_runs",
    "created",
    "event",
    "event_row",
    "event_stub",
    "new_id",
    "store_events",
]


# --------------------------------------------------------------------------- over HTTP


def native_created(deal: str, pipeline: str, **data: Any) -> dict[str, Any]:
    """A native ``deal.created`` body (title T, value 1 USD, plus ``data``)."""
    return native(
        "deal.created",
        deal_id=deal,
        pipeline_id=pipeline,
        title="T",
        value=1,
        currency="USD",
        **data,
    )


def post(api: Api, source: dict[str, Any], body: dict[str, Any]) -> str:
    """Send a native webhook to an ``hmac`` source; returns the accepted event's id."""
    raw = dumps(body)
    resp = api.webhook(source["id"], raw, sign_hmac(source["secret"], raw, uid("dlv")))
    assert resp.status_code == 202, resp.text
    return str(resp.json()["event_id"])


async def status_of(api: Api, event_id: str, *wanted: str) -> dict[str, Any]:
    """The event once its status is one of ``wanted``."""
    return await wait_for(lambda: (e := api.event(event_id))["status"] in wanted and e)


def activities(api: Api, deal: str, kind: str) -> int:
    """How many ``deal.activity`` entries of ``kind`` the deal's history holds."""
    return sum(1 for h in history(api.db, deal, "activity") if h.data.get("kind") == kind)
