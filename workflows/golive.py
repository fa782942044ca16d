"""``pipeline-golive-{id}``: waits for a pipeline's go-live date, then makes it live.

Either a first go-live (a ``scheduled`` pipeline) or a new version of a live pipeline taking
over from the live one (``scheduled_version``; ``version`` here). The API and ``load_snapshot``
also derive the status and the version in effect from ``go_live_at`` on every read, so a go-live
is visible on time even if this timer runs late; the workflow is what records it (active
version, status, test mode off, audit entry) and what an operator sees waiting in the Temporal
Web UI. Activating the pipeline at once cancels it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy


class GoLiveInput(BaseModel):
    pipeline_id: str
    version: int
    go_live_at: datetime


def go_live_workflow_id(pipeline_id: str) -> str:
    return f"pipeline-golive-{pipeline_id}"


@workflow.defn(name="PipelineGoLiveWorkflow")
class PipelineGoLiveWorkflow:
    @workflow.run
    async def run(self, inp: GoLiveInput) -> str:
        wait = inp.go_live_at - workflow.now()
        if wait > timedelta(0):
            await workflow.sleep(wait)
        return await workflow.execute_activity(
            "pipeline_go_live",
            inp,
            result_type=str,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
        )
