"""Activities for pipeline lifecycle: carrying out a scheduled go-live."""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity

from store.db import Database
from store.models import AuditEntry, Pipeline
from workflows.golive import GoLiveInput


class PipelineActivities:
    def __init__(self, db: Database) -> None:
        self.db = db

    @activity.defn(name="pipeline_go_live")
    def go_live(self, inp: GoLiveInput) -> str:
        """Make the pipeline active, unless the admin changed the schedule since."""
        with self.db.session() as session:
            row = session.get(Pipeline, inp.pipeline_id)
            if row is None:
                return "pipeline deleted"
            if row.status != "scheduled" or row.go_live_at != inp.go_live_at:
                return f"schedule changed (status {row.status}); nothing to do"
            now = datetime.now(UTC)
            row.status = "active"
            row.test_mode = False
            row.active_version = inp.version
            row.updated_at = now
            session.add(row)
            session.add(
                AuditEntry(
                    actor="scheduler",
                    action="pipeline.activated",
                    target=inp.pipeline_id,
                    data={"version": inp.version, "status": "active", "go_live": True},
                )
            )
            session.commit()
        return "active"
