"""Activities for pipeline lifecycle: carrying out a scheduled go-live."""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity

from domain.activation import LIVE_STATUSES
from store.db import Database
from store.models import AuditEntry, Pipeline
from workflows.golive import GoLiveInput


class PipelineActivities:
    def __init__(self, db: Database) -> None:
        self.db = db

    @activity.defn(name="pipeline_go_live")
    def go_live(self, inp: GoLiveInput) -> str:
        """Make the scheduled version active (test mode off), unless the admin changed the
        schedule since: a first go-live (``scheduled``) or a new version of a live pipeline
        (``scheduled_version``), for the same ``go_live_at`` and version as this timer's."""
        with self.db.session() as session:
            row = session.get(Pipeline, inp.pipeline_id)
            if row is None:
                return "pipeline deleted"
            first = row.status == "scheduled" and row.active_version == inp.version
            new_version = row.status in LIVE_STATUSES and row.scheduled_version == inp.version
            if row.go_live_at != inp.go_live_at or not (first or new_version):
                return f"schedule changed (status {row.status}); nothing to do"
            now = datetime.now(UTC)
            from_version = row.active_version
            row.status = "active"
            row.test_mode = False
            row.active_version = inp.version
            row.scheduled_version = None
            row.updated_at = now
            session.add(row)
            session.add(
                AuditEntry(
                    actor="scheduler",
                    action="pipeline.activated",
                    target=inp.pipeline_id,
                    data={
                        "version": inp.version,
                        "from_version": from_version,
                        "status": "active",
                        "test_mode": False,
                        "go_live": True,
                        "go_live_at": inp.go_live_at.isoformat(),
                    },
                )
            )
            session.commit()
        return "active"
