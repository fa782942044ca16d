"""``ReconcileWorkflow``, run by the ``dealflow-reconcile`` schedule (every 5 minutes).

1. Events handed over long ago without an outcome: an outcome their deal workflow recorded (the
   write was lost) is written again from the workflow's history; the others are re-queued.
2. Read-model rows behind their deal workflow's state are rewritten from it.
3. History entries missing from the table are written again from the workflows' records.

Its result is the report (counts and ids)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.events import ReconcileInput, ReconcileReport
    from activities.integrations import DB_WRITE_RETRY

SCHEDULE_ID = "dealflow-reconcile"


@workflow.defn(name="ReconcileWorkflow")
class ReconcileWorkflow:
    @workflow.run
    async def run(self, inp: ReconcileInput) -> ReconcileReport:
        recovered = ReconcileReport()
        if workflow.patched("reconcile-from-records"):
            recovered = await workflow.execute_activity(
                "recover_stuck_outcomes",
                inp,
                result_type=ReconcileReport,
                start_to_close_timeout=timedelta(minutes=4),
                heartbeat_timeout=timedelta(minutes=1),
                retry_policy=DB_WRITE_RETRY,
            )
        events: ReconcileReport = await workflow.execute_activity(
            "requeue_stuck_events",
            inp,
            result_type=ReconcileReport,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=DB_WRITE_RETRY,
        )
        deals: ReconcileReport = await workflow.execute_activity(
            "reconcile_deals",
            inp,
            result_type=ReconcileReport,
            start_to_close_timeout=timedelta(minutes=4),
            retry_policy=DB_WRITE_RETRY,
        )
        events.deals_checked = deals.deals_checked
        events.deals_behind = deals.deals_behind
        events.deals_repaired = deals.deals_repaired
        events.outcomes_recovered = recovered.outcomes_recovered
        events.recovered_ids = recovered.recovered_ids
        if workflow.patched("reconcile-from-records"):
            history: ReconcileReport = await workflow.execute_activity(
                "restore_deal_history",
                inp,
                result_type=ReconcileReport,
                start_to_close_timeout=timedelta(minutes=4),
                heartbeat_timeout=timedelta(minutes=1),
                retry_policy=DB_WRITE_RETRY,
            )
            events.history_restored = history.history_restored
            events.history_repaired = history.history_repaired
            events.history_unrecoverable = history.history_unrecoverable
        return events


async def ensure_schedule(client, settings) -> bool:  # type: ignore[no-untyped-def]
    """Create the reconciliation schedule unless it exists (every worker calls this at start).
    Returns whether this call created it."""
    from temporalio.client import (
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleAlreadyRunningError,
        ScheduleIntervalSpec,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleSpec,
    )

    try:
        await client.create_schedule(
            SCHEDULE_ID,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    "ReconcileWorkflow",
                    ReconcileInput(
                        stuck_after_seconds=settings.reconcile_stuck_after.total_seconds()
                    ),
                    id="dealflow-reconcile-run",
                    task_queue=settings.task_queue,
                ),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=settings.reconcile_every)]),
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            ),
        )
        return True
    except ScheduleAlreadyRunningError:
        return False
