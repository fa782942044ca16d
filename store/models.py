"""Tables. The event store is the durable queue of accepted webhooks; deals and history are the
read model the deal workflows write (the workflows stay the source of truth)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

from store.types import UTCDateTime, utcnow


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"
    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    role: str = Field(max_length=20)
    subject: str = Field(max_length=200)
    key_hash: str = Field(max_length=64, unique=True, index=True)
    prefix: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Source(SQLModel, table=True):
    __tablename__ = "sources"
    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    scheme: str = Field(max_length=20)
    secret_enc: str
    previous_secret_enc: str | None = None
    previous_valid_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    ip_allowlist: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    rate_per_second: float | None = None
    rate_burst: int | None = None
    tolerance_seconds: float | None = None
    mapping: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    enabled: bool = True
    blocked_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Event(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("source_id", "delivery_id", name="uq_events_source_delivery"),
        Index("ix_events_status_received", "status", "received_at"),
    )
    id: str = Field(primary_key=True, max_length=40)
    source_id: str = Field(max_length=40, index=True)
    delivery_id: str = Field(max_length=200)
    type: str = Field(max_length=100, index=True)
    status: str = Field(max_length=20)
    attempts: int = 0
    last_error: str | None = None
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    processed_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    """When the outcome was recorded (indexed: the failure-rate alert reads a window of it)."""
    deal_id: str | None = Field(default=None, max_length=200, index=True)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    raw_body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    headers: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    body_sha256: str = Field(max_length=64)
    queued_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    replays: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    """Replays from the dead letters so far (part of the deal workflow's dedup key)."""


class DealLink(SQLModel, table=True):
    """An id another system knows a deal by (``stripe_customer`` ``cus_…``), declared in the
    ``external_ids`` of a ``deal.created`` or ``deal.updated`` event and written with that
    event, in its transaction; events with a ``deal_ref`` are routed through it. One id names
    one deal, and a deal has one id per namespace: a later declaration (by ``linked_at``)
    takes an id over, and releases the deal's earlier id in that namespace."""

    __tablename__ = "deal_links"
    namespace: str = Field(primary_key=True, max_length=64)
    external_id: str = Field(primary_key=True, max_length=200)
    deal_id: str = Field(max_length=200, index=True)
    event_id: str = Field(max_length=40)
    linked_at: datetime = Field(sa_type=UTCDateTime)
    """When the declaring event was received."""


class Pipeline(SQLModel, table=True):
    __tablename__ = "pipelines"
    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    current_version: int = 1
    active_version: int | None = None
    """The version new deals get (until ``go_live_at``, if ``scheduled_version`` is set)."""
    status: str = Field(default="draft", max_length=20)
    test_mode: bool = False
    go_live_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    scheduled_version: int | None = None
    """A new version of a live pipeline that takes over from ``go_live_at`` on
    (``domain.activation.effective_version``); the go-live timer then makes it active."""
    created_by: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PipelineVersion(SQLModel, table=True):
    __tablename__ = "pipeline_versions"
    __table_args__ = (UniqueConstraint("pipeline_id", "version", name="uq_pipeline_version"),)
    id: int | None = Field(default=None, primary_key=True)
    pipeline_id: str = Field(max_length=40, index=True)
    version: int
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_by: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Deal(SQLModel, table=True):
    __tablename__ = "deals"
    deal_id: str = Field(primary_key=True, max_length=200)
    pipeline_id: str = Field(max_length=40, index=True)
    pipeline_version: int
    stage: str = Field(max_length=64, index=True)
    stage_entered_at: datetime = Field(sa_type=UTCDateTime)
    status: str = Field(max_length=10, index=True)
    title: str = ""
    value: float = 0
    currency: str = Field(default="USD", max_length=3)
    owner: str | None = Field(default=None, max_length=200, index=True)
    fields: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    is_rotting: bool = False
    sla: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    pending_approval: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    state: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    revision: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DealHistory(SQLModel, table=True):
    __tablename__ = "deal_history"
    __table_args__ = (UniqueConstraint("deal_id", "seq", name="uq_deal_history_seq"),)
    id: int | None = Field(default=None, primary_key=True)
    deal_id: str = Field(max_length=200, index=True)
    seq: int
    at: datetime = Field(sa_type=UTCDateTime)
    kind: str = Field(max_length=40)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Approval(SQLModel, table=True):
    __tablename__ = "approvals"
    id: str = Field(primary_key=True, max_length=40)
    deal_id: str = Field(max_length=200, index=True)
    from_stage: str = Field(max_length=64)
    to_stage: str = Field(max_length=64)
    approvers: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    mode: str = Field(max_length=10)
    status: str = Field(max_length=20, index=True)
    decisions: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    requested_by: str | None = None
    requested_at: datetime = Field(sa_type=UTCDateTime)
    due_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    decided_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Task(SQLModel, table=True):
    __tablename__ = "tasks"
    id: str = Field(primary_key=True, max_length=80)
    deal_id: str = Field(max_length=200, index=True)
    template: str = Field(max_length=200)
    title: str
    due_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    status: str = Field(default="open", max_length=20)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_log"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    actor: str | None = Field(default=None, max_length=200)
    action: str = Field(max_length=60, index=True)
    target: str = Field(max_length=200, index=True)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class EventAttempt(SQLModel, table=True):
    """What happened to an event, attempt by attempt: handoff failures, processing errors,
    dead-lettering, replays, discards and reconciliation re-queues."""

    __tablename__ = "event_attempts"
    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=40, index=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    kind: str = Field(max_length=30)
    error: str | None = None
    actor: str | None = Field(default=None, max_length=200)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class CircuitBreaker(SQLModel, table=True):
    """One outbound integration endpoint's breaker, shared by every worker."""

    __tablename__ = "circuit_breakers"
    integration: str = Field(primary_key=True, max_length=200)
    state: str = Field(default="closed", max_length=10)
    failures: int = 0
    window_started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    opened_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    probe_started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = None
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Migration(SQLModel, table=True):
    """A bulk move of existing deals to another pipeline or version (``MigrationWorkflow``)."""

    __tablename__ = "deal_migrations"
    id: str = Field(primary_key=True, max_length=40)
    source_pipeline_id: str = Field(max_length=40, index=True)
    target_pipeline_id: str = Field(max_length=40)
    target_version: int
    stage_map: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    filter: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    dry_run: bool = False
    batch_size: int = 100
    rate_per_second: float = 50
    status: str = Field(max_length=20, index=True)
    total: int = 0
    migrated: int = 0
    skipped: int = 0
    failed: int = 0
    cursor: str | None = Field(default=None, max_length=200)
    errors: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    report: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_by: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Alert(SQLModel, table=True):
    """The alert outbox: each alert raised, until a worker's ``AlertDispatcher`` delivered it.

    ``key`` names the occurrence (``event.dead_lettered:{event_id}#{replays}``, …): raising the
    same alert again (an activity retried, another worker) inserts nothing. ``id`` is the
    ``webhook-id`` of every delivery attempt. ``status``: ``pending`` → ``delivered`` |
    ``abandoned``; a pending row is due at ``next_attempt_at`` (a dispatcher's claim moves it
    past a lease, so no two workers send it at once)."""

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("key", name="uq_alerts_key"),
        Index("ix_alerts_status_next_attempt", "status", "next_attempt_at"),
    )
    id: str = Field(primary_key=True, max_length=40)
    key: str = Field(max_length=300)
    kind: str = Field(max_length=40)
    summary: str
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="pending", max_length=12)
    attempts: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    claimed_by: str | None = Field(default=None, max_length=80)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = None
