"""``MigrationWorkflow`` continues as new every ``batches_per_run`` batches, carrying the cursor
and the counters: each deal is still moved exactly once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from temporalio.client import WorkflowExecutionStatus

from dealflow.ids import new_id
from store.models import Migration
from tests.migrations.conftest import SOURCE, STAGE_MAP, TARGET, Harness, migrated_entries, rows
from workflows.migration import MigrationInput, Progress, migration_workflow_id


async def test_continue_as_new_carries_cursor_and_counters(harness: Harness) -> None:
    h = harness
    source = await h.pipeline(SOURCE)
    target = await h.pipeline(TARGET)
    tag = uuid.uuid4().hex[:6]
    ids = await h.deals(source, {f"can-{tag}-{i:02d}": "lead" for i in range(11)})
    mid = new_id("mig")
    now = datetime.now(UTC)
    with h.db.session() as session:
        session.add(
            Migration(
                id=mid,
                source_pipeline_id=source,
                target_pipeline_id=target,
                target_version=1,
                stage_map=STAGE_MAP,
                status="running",
                total=11,
                started_at=now,
            )
        )
        session.commit()
    handle = await h.client.start_workflow(
        "MigrationWorkflow",
        MigrationInput(
            migration_id=mid,
            source_pipeline_id=source,
            target_pipeline_id=target,
            target_version=1,
            stage_map=STAGE_MAP,
            created_before=now,
            batch_size=2,
            rate_per_second=1000,
            batches_per_run=2,
            progress=Progress(total=11),
        ),
        id=migration_workflow_id(mid),
        task_queue=h.task_queue,
    )
    assert await handle.result() == "completed"  # follows the runs to the last one
    first_run = h.client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id)
    desc = await first_run.describe()
    assert desc.status == WorkflowExecutionStatus.CONTINUED_AS_NEW
    latest = await h.client.get_workflow_handle(handle.id).describe()
    assert latest.run_id != handle.first_execution_run_id
    progress = await h.client.get_workflow_handle(handle.id).query("progress")
    assert (progress["migrated"], progress["cursor"]) == (11, ids[-1])

    view = await h.migration(mid)
    assert (view["status"], view["total"], view["migrated"], view["failed"]) == (
        "completed",
        11,
        11,
        0,
    )
    assert migrated_entries(h.db, ids, mid) == dict.fromkeys(ids, 1)
    assert {r.pipeline_id for r in rows(h.db, ids).values()} == {target}
