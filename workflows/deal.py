"""One long-running workflow per deal (``deal-{deal_id}``).

The workflow is a thin durable shell around the pure ``domain.engine.Engine``: it receives
batches of events by signal, transitions and approval decisions by update, sleeps until the
engine's next deadline (SLA, rotting, approval timeout, time-in-stage), runs the engine's side
effects as activities and writes the read model through an activity. State, unprocessed events
and the recent event ids (for deduplication) are carried across continue-as-new.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.events import DeadLetterInput, DeadLetterItem
    from activities.integrations import effect_retry, effect_timeout
    from domain.circuit import CircuitOpenInfo, gave_up, next_wait
    from domain.deal import Actor
    from domain.engine import DecisionError, Effect, Engine
    from domain.events import DealEvent
    from domain.pipeline import PipelineSnapshot
    from domain.rules import status_for
    from domain.sizes import PAYLOAD_BUDGET_BYTES, fields_problem, json_size
    from workflows.messages import (
        DealContext,
        DealInput,
        DecisionReply,
        DecisionRequest,
        EffectInput,
        EffectResult,
        EventBatch,
        EventOutcome,
        LoadContextInput,
        LoadDealInput,
        LoadedDeal,
        LoadPipelineInput,
        MigrateReply,
        MigrateRequest,
        RecordInput,
        SnoozeRequest,
        TransitionReply,
        TransitionRequest,
        WaitingEffect,
        problems_detail,
    )
    from workflows.retries import DB_RETRY, cause_message
    from workflows.search import (
        DEAL_ID,
        DEAL_STAGE,
        DEAL_STATUS,
        IS_ROTTING,
        PIPELINE_ID,
        Upserts,
    )

SEEN_LIMIT = 10_000
CHUNK = 500
"""Events applied per step, and history entries per ``record_deal`` call: a burst of events
must not become one activity input over Temporal's payload limit (2 MB)."""
CARRY_LIMIT = CHUNK
"""At most this many unprocessed events are carried across continue-as-new (more are processed
first), so the new run's input stays well under the payload limit too."""


@workflow.defn(name="DealWorkflow")
class DealWorkflow:
    @workflow.init
    def __init__(self, inp: DealInput) -> None:
        self.deal_id = inp.deal_id
        self.inbox: list[DealEvent] = list(inp.pending_events)
        self.seen: dict[str, None] = dict.fromkeys(inp.seen_event_ids)
        self.engine: Engine | None = (
            Engine(inp.pipeline, inp.state) if inp.state and inp.pipeline else None
        )
        self.lock = asyncio.Lock()
        self.outcomes: list[EventOutcome] = []
        self.dead: list[DeadLetterItem] = []
        self.recorded_revision = self.engine.state.revision if self.engine else -1
        self.search: dict[str, object] = {}
        self.details = ""
        self.ready = self.engine is not None
        self.wake = False
        self.in_flight = 0
        self.preloaded: DealContext | None = None
        """What the run's first read found (pipelines for the first ``deal.created``)."""
        self.waiting: dict[str, WaitingEffect] = {}
        """In-flight effects asleep on an open circuit (by key), carried across continue-as-new."""

    # ------------------------------------------------------------------ main loop

    @workflow.run
    async def run(self, inp: DealInput) -> str:
        if self.engine is None:
            await self._restore()
        self.ready = True
        if self.engine is not None:
            for carried in inp.waiting_effects:
                self._start_effect(self.engine, carried.effect, carried)
        while True:
            timeout = self._timeout()
            try:
                await workflow.wait_condition(
                    lambda: bool(self.inbox) or self.wake, timeout=timeout
                )
            except TimeoutError:
                pass
            self.wake = False
            async with self.lock:
                await self._step()
            if self.engine is None and not self.inbox:
                return "no deal"
            if (
                self.engine is not None
                and self.engine.deal.status != "open"
                and not self.inbox
                and workflow.all_handlers_finished()
                and self.in_flight == 0
            ):
                return self.engine.deal.status
            if workflow.info().is_continue_as_new_suggested():
                # Let running updates finish, then hand over without awaiting anything more, so
                # that no update is cut off and nothing is left unprocessed or unrecorded; what
                # arrived meanwhile is processed first (the loop comes back here afterwards).
                # Effects asleep on an open circuit (possibly for hours) are not waited for:
                # they are carried, and the next run sleeps them out. Running activities are.
                await workflow.wait_condition(
                    lambda: (
                        workflow.all_handlers_finished()
                        and not self.lock.locked()
                        and self.in_flight == len(self.waiting)
                    )
                )
                if (
                    len(self.inbox) > CARRY_LIMIT
                    or (workflow.patched("carry-bytes") and self._inbox_too_large())
                    or self.wake
                    or self.outcomes
                    or self.dead
                    or self._unrecorded()
                    or self.in_flight != len(self.waiting)  # a sleeper woke meanwhile
                ):
                    continue
                workflow.continue_as_new(self._carry())

    def _inbox_too_large(self) -> bool:
        """Unprocessed events too large to carry across continue-as-new (processed first)."""
        return json_size([e.data for e in self.inbox]) > PAYLOAD_BUDGET_BYTES

    def _unrecorded(self) -> bool:
        engine = self.engine
        return engine is not None and bool(
            engine.history or engine.effects or engine.state.revision != self.recorded_revision
        )

    async def _catch_up(self) -> Engine:
        """Apply what is due by now before a message acts (a timer may be due in this task)."""
        engine = self._engine()
        engine.advance(workflow.now())
        if engine.history or engine.effects:
            self._start_effects()
            await self._flush()
        return engine

    def _timeout(self) -> timedelta | None:
        if self.engine is None:
            return None
        deadline = self.engine.next_deadline()
        if deadline is None:
            return None
        return max(deadline - workflow.now(), timedelta(milliseconds=1))

    def _carry(self) -> DealInput:
        seen = list(self.seen)[-SEEN_LIMIT:]
        return DealInput(
            deal_id=self.deal_id,
            state=self.engine.state if self.engine else None,
            pipeline=self.engine.pipeline if self.engine else None,
            seen_event_ids=seen,
            pending_events=list(self.inbox),
            waiting_effects=list(self.waiting.values()),
        )

    async def _restore(self) -> None:
        """A new run without carried state: a deal closed earlier, or the read model knows it.

        One activity reads the deal and the pipelines of the ``deal.created`` events already in
        the inbox (a new deal's first batch), so creating a deal needs no second read."""
        loaded: LoadedDeal | None
        if workflow.patched("load-deal-context"):
            pipeline_ids = sorted(
                {
                    e.data["pipeline_id"]
                    for e in self.inbox
                    if e.type == "deal.created" and isinstance(e.data.get("pipeline_id"), str)
                }
            )
            context: DealContext = await workflow.execute_activity(
                "load_deal_context",
                LoadContextInput(deal_id=self.deal_id, pipeline_ids=pipeline_ids),
                result_type=DealContext,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=DB_RETRY,
            )
            loaded = context.deal
            self.preloaded = context
        else:
            loaded = await workflow.execute_activity(
                "load_deal",
                LoadDealInput(deal_id=self.deal_id),
                result_type=LoadedDeal | None,  # type: ignore[arg-type]
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=DB_RETRY,
            )
        if loaded is not None:
            self.engine = Engine(loaded.pipeline, loaded.state)
            self.recorded_revision = loaded.state.revision

    async def _step(self) -> None:
        now = workflow.now()
        if self.engine is not None:
            self.engine.advance(now)
        batch, self.inbox = self.inbox[:CHUNK], self.inbox[CHUNK:]
        for event in batch:
            key = _dedup_key(event)
            if key in self.seen:
                continue
            self.seen[key] = None
            try:
                outcome = await self._apply(event)
            except Exception as exc:  # a payload the code cannot handle: a poison event
                outcome = self._dead(event, f"processing error: {type(exc).__name__}: {exc}")
            if outcome is not None:
                self.outcomes.append(outcome)
        if len(self.seen) > 2 * SEEN_LIMIT:
            self.seen = dict.fromkeys(list(self.seen)[-SEEN_LIMIT:])
        self._start_effects()
        await self._flush()

    # ------------------------------------------------------------------ events

    async def _apply(self, event: DealEvent) -> EventOutcome | None:
        now = workflow.now()
        data = event.data
        ok = EventOutcome(event_id=event.event_id, status="processed")
        if event.type == "deal.created":
            if self.engine is not None:
                return ok  # the deal exists: a second creation changes nothing
            pipeline_id = data["pipeline_id"]
            preloaded, self.preloaded = self.preloaded, None  # read once, for the first creation
            if preloaded is not None and pipeline_id in preloaded.pipelines:
                snapshot = preloaded.pipelines[pipeline_id]
            elif preloaded is not None and pipeline_id in preloaded.pipeline_errors:
                return self._dead(event, preloaded.pipeline_errors[pipeline_id])
            else:
                try:
                    snapshot = await workflow.execute_activity(
                        "load_pipeline",
                        LoadPipelineInput(pipeline_id=pipeline_id),
                        result_type=PipelineSnapshot,
                        start_to_close_timeout=timedelta(seconds=30),
                        retry_policy=DB_RETRY,
                    )
                except ActivityError as exc:
                    return self._dead(event, cause_message(exc))
            if workflow.patched("fields-budget") and (
                too_large := fields_problem({}, data.get("fields"))
            ):
                return self._failed(event, too_large)
            engine, problems = Engine.create(
                snapshot,
                deal_id=self.deal_id,
                title=data.get("title", ""),
                value=data.get("value", 0),
                currency=data.get("currency", snapshot.spec.currency),
                owner=data.get("owner"),
                fields=data.get("fields") or {},
                stage=data.get("stage"),
                now=now,
            )
            if problems:
                return self._dead(event, "; ".join(p.msg for p in problems))
            self.engine = engine
            return ok
        if self.engine is None:
            return self._dead(event, f"deal {self.deal_id} does not exist (no deal.created yet)")
        engine = self.engine
        if event.type == "deal.updated":
            if workflow.patched("fields-budget") and (
                too_large := fields_problem(engine.deal.fields, data.get("fields"))
            ):
                return self._failed(event, too_large)
            engine.update(now, data)
        elif event.type == "deal.activity":
            engine.activity(now, data.get("kind", "activity"))
        elif event.type == "deal.stage_change_requested":
            actor = Actor(subject=data.get("actor") or f"source:{event.source_id}")
            result = engine.request_transition(data["to_stage"], actor, data.get("fields"), now)
            if result.outcome == "refused":
                return self._failed(event, "; ".join(p.msg for p in result.problems))
        return ok

    def _failed(self, event: DealEvent, error: str) -> EventOutcome:
        workflow.logger.warning("event %s not applied: %s", event.event_id, error)
        return EventOutcome(event_id=event.event_id, status="failed", error=error)

    def _dead(self, event: DealEvent, error: str) -> EventOutcome | None:
        """A processing error (not a business refusal): the event is dead-lettered, with its
        error, for an operator to replay or discard."""
        if not workflow.patched("dead-letters"):
            return self._failed(event, error)
        workflow.logger.warning("event %s dead-lettered: %s", event.event_id, error)
        self.dead.append(
            DeadLetterItem(
                event_id=event.event_id,
                error=error,
                data={"replay": event.replay, "type": event.type},
            )
        )
        return None

    # ------------------------------------------------------------------ effects and records

    def _start_effects(self) -> None:
        """Run the engine's side effects as activities in the background.

        An effect can take minutes (retries against a mail server that is down); the deal must
        not wait for it: events, transitions and decisions go on meanwhile, and each result is
        recorded (and flushed by the main loop) when it comes.
        """
        engine = self.engine
        if engine is None or not engine.effects:
            return
        effects, engine.effects = engine.effects, []
        for effect in effects:
            self._start_effect(engine, effect)

    def _start_effect(
        self, engine: Engine, effect: Effect, resume: WaitingEffect | None = None
    ) -> None:
        self.in_flight += 1
        asyncio.create_task(self._run_effect(engine, effect, resume))  # noqa: RUF006

    async def _run_effect(
        self, engine: Engine, effect: Effect, resume: WaitingEffect | None = None
    ) -> None:
        try:
            result = await self._effect_outcome(engine, effect, resume)
        finally:
            self.in_flight -= 1
            self.wake = True
        now = workflow.now()
        if isinstance(result, Exception | str):
            error = result if isinstance(result, str) else cause_message(result)
            engine.record(
                now,
                "action_failed",
                {"effect": effect.kind, "automation": effect.automation, "error": error},
            )
        else:
            engine.record(
                now,
                "action_run" if result.executed else "action_recorded",
                {
                    "effect": effect.kind,
                    "automation": effect.automation,
                    "detail": result.detail,
                    "test_mode": not result.executed,
                },
            )
            if effect.kind == "assign_owner" and result.owner:
                engine.set_owner(now, result.owner, reason=f"automation:{effect.automation}")
        engine.touch()

    async def _effect_outcome(
        self, engine: Engine, effect: Effect, resume: WaitingEffect | None
    ) -> EffectResult | Exception | str:
        """The effect's result, its last error, or (a string) why it was given up.

        While its integration's circuit breaker is open the activity fails at once
        (``circuit_open``, non-retryable, spending no attempt); the effect then sleeps on a
        durable timer until the breaker may be probed and runs again, under the same key,
        until the waits reach ``DEALFLOW_BREAKER_MAX_WAIT`` (or at once with fallback
        ``fail``). Histories from before (no ``circuit-wait`` marker) record the failure, as
        they did.
        """
        waited = resume.waited if resume is not None else timedelta(0)
        if resume is not None:
            await self._sleep_on_circuit(resume)
        while True:
            try:
                return await workflow.execute_activity(
                    "run_effect",
                    EffectInput(
                        deal_id=self.deal_id, effect=effect, test_mode=engine.pipeline.test_mode
                    ),
                    result_type=EffectResult,
                    start_to_close_timeout=effect_timeout(effect.kind),
                    retry_policy=effect_retry(effect.kind),
                )
            except Exception as exc:  # an ActivityError: out of retries, or not retryable
                info = _circuit_open(exc)
                if info is None or not workflow.patched("circuit-wait"):
                    return exc
                integration = _integration(effect)
                pause = next_wait(info, waited)
                if pause is None:
                    return gave_up(integration, info, waited)
                if waited == timedelta(0) and workflow.patched("circuit-wait-history"):
                    # Once per call: the deal's history says why its action is late.
                    engine.record(
                        workflow.now(),
                        "action_waiting",
                        {
                            "effect": effect.kind,
                            "automation": effect.automation,
                            "integration": integration,
                            "reason": f"circuit of integration '{integration}' open",
                            "max_wait_seconds": info.max_wait.total_seconds(),
                        },
                    )
                    self.wake = True  # the main loop records it
                waited += pause
                workflow.logger.info(
                    "effect %s: circuit of integration '%s' open; waiting %ss",
                    effect.key,
                    integration,
                    pause.total_seconds(),
                )
                await self._sleep_on_circuit(
                    WaitingEffect(effect=effect, retry_at=workflow.now() + pause, waited=waited)
                )

    async def _sleep_on_circuit(self, waiting: WaitingEffect) -> None:
        """A timer (no worker slot, no attempt), counted in ``waiting`` while it runs."""
        key = waiting.effect.key
        integration = _integration(waiting.effect)
        self.waiting[key] = waiting
        try:
            left = waiting.retry_at - workflow.now()
            if left > timedelta(0):
                await workflow.sleep(left, summary=f"circuit of integration '{integration}' open")
        finally:
            self.waiting.pop(key, None)

    async def _flush(self) -> None:
        if self.dead:
            dead, self.dead = self.dead, []
            await workflow.execute_activity(
                "dead_letter_events",
                DeadLetterInput(items=dead),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=DB_RETRY,
            )
        engine = self.engine
        if engine is None:
            if self.outcomes:
                outcomes, self.outcomes = self.outcomes, []
                await workflow.execute_activity(
                    "record_deal",
                    RecordInput(state=None, outcomes=outcomes),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=DB_RETRY,
                )
            return
        if not (engine.history or self.outcomes or engine.state.revision != self.recorded_revision):
            return
        history, engine.history = engine.history, []
        outcomes, self.outcomes = self.outcomes, []
        engine.touch()
        first = True
        while first or history:
            # The first call writes the deal row (a newer revision); the later ones only add
            # history (the row's revision is not newer, so the row is left as it is).
            piece, history = history[:CHUNK], history[CHUNK:]
            await workflow.execute_activity(
                "record_deal",
                RecordInput(state=engine.state, history=piece, outcomes=outcomes if first else []),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=DB_RETRY,
            )
            first = False
        self.recorded_revision = engine.state.revision
        self._update_search()

    def _update_search(self) -> None:
        assert self.engine is not None
        deal = self.engine.deal
        wanted = {
            "DealId": deal.deal_id,
            "PipelineId": deal.pipeline_id,
            "DealStage": deal.stage,
            "DealStatus": deal.status,
            "IsRotting": deal.is_rotting,
        }
        if wanted != self.search and Upserts.enabled:
            workflow.upsert_search_attributes(
                [
                    DEAL_ID.value_set(deal.deal_id),
                    PIPELINE_ID.value_set(deal.pipeline_id),
                    DEAL_STAGE.value_set(deal.stage),
                    DEAL_STATUS.value_set(deal.status),
                    IS_ROTTING.value_set(deal.is_rotting),
                ]
            )
        sla = f", SLA {deal.sla.state} (due {deal.sla.due_at:%Y-%m-%d %H:%M}Z)" if deal.sla else ""
        rotting = ", ROTTING" if deal.is_rotting else ""
        pending = (
            f", waiting for approval to {deal.pending_approval.to_stage}"
            if deal.pending_approval
            else ""
        )
        details = (
            f"**{deal.title or deal.deal_id}** — stage `{deal.stage}` ({deal.status}), "
            f"{deal.value:g} {deal.currency}, owner {deal.owner or '—'}{sla}{rotting}{pending}"
        )
        self.search = wanted
        if details != self.details:
            self.details = details
            workflow.set_current_details(details)

    # ------------------------------------------------------------------ messages

    @workflow.signal
    def events(self, batch: EventBatch) -> None:
        queued = {_dedup_key(e) for e in self.inbox}
        for event in batch.events:
            key = _dedup_key(event)
            if key not in self.seen and key not in queued:
                self.inbox.append(event)
                queued.add(key)

    @workflow.update
    async def transition(self, req: TransitionRequest) -> TransitionReply:
        async with self.lock:
            engine = await self._catch_up()
            result = engine.request_transition(req.to_stage, req.actor, req.fields, workflow.now())
            if result.outcome == "refused":
                raise _refusal(result.problems)
            self._start_effects()
            await self._flush()
            self.wake = True
            return TransitionReply(
                outcome=result.outcome,
                approval_id=result.approval_id,
                revision=engine.state.revision,
            )

    @transition.validator
    def _validate_transition(self, req: TransitionRequest) -> None:
        problems = self._engine().check(req.to_stage, req.actor, req.fields)
        if problems:
            raise _refusal(problems)

    @workflow.update
    async def decide(self, req: DecisionRequest) -> DecisionReply:
        async with self.lock:
            engine = await self._catch_up()
            try:
                result = engine.decide(
                    workflow.now(), req.approval_id, req.subject, req.decision, req.comment
                )
            except DecisionError as exc:
                raise ApplicationError(exc.message, type=exc.kind, non_retryable=True) from None
            self._start_effects()
            await self._flush()
            self.wake = True
            return DecisionReply(
                approval_id=result.approval_id,
                outcome=result.outcome,
                revision=engine.state.revision,
            )

    @decide.validator
    def _validate_decide(self, req: DecisionRequest) -> None:
        try:
            self._engine().check_decision(req.approval_id, req.subject)
        except DecisionError as exc:
            raise ApplicationError(exc.message, type=exc.kind, non_retryable=True) from None

    @workflow.update
    async def snooze(self, req: SnoozeRequest) -> int:
        async with self.lock:
            engine = await self._catch_up()
            if engine.deal.status != "open":
                raise ApplicationError("the deal is closed", type="conflict", non_retryable=True)
            engine.snooze_rotting(workflow.now(), req.until)
            await self._flush()
            self.wake = True
            return engine.state.revision

    @snooze.validator
    def _validate_snooze(self, req: SnoozeRequest) -> None:
        engine = self._engine()
        if req.until <= workflow.now():
            raise ApplicationError("'until' must be in the future", type="invalid")
        if engine.deal.status != "open":
            raise ApplicationError("the deal is closed", type="conflict")

    @workflow.query
    def state(self) -> dict:
        if self.engine is None:
            return {}
        return self.engine.state.model_dump(mode="json")

    def _engine(self) -> Engine:
        if self.engine is None or not self.ready:
            raise ApplicationError(f"deal {self.deal_id} does not exist", type="not_found")
        return self.engine

    @workflow.update
    async def migrate(self, req: MigrateRequest) -> MigrateReply:
        """One deal's part of a bulk migration; applied once per migration id."""
        async with self.lock:
            engine = await self._catch_up()
            deal = engine.deal
            if req.migration_id in engine.state.migrations:
                return MigrateReply(
                    outcome="already_migrated", stage=deal.stage, revision=engine.state.revision
                )
            reason = req.skip_reason(deal)
            if reason is not None:
                return MigrateReply(
                    outcome="skipped",
                    stage=deal.stage,
                    reason=reason,
                    revision=engine.state.revision,
                )
            engine.migrate(
                req.pipeline, req.stage_map[deal.stage], workflow.now(), req.migration_id
            )
            self._start_effects()
            await self._flush()
            self.wake = True
            return MigrateReply(
                outcome="migrated", stage=engine.deal.stage, revision=engine.state.revision
            )

    @migrate.validator
    def _validate_migrate(self, req: MigrateRequest) -> None:
        self._engine()
        unknown = sorted({s for s in req.stage_map.values() if req.pipeline.spec.stage(s) is None})
        if unknown:
            raise ApplicationError(
                f"stage(s) {', '.join(unknown)} not in pipeline {req.pipeline.pipeline_id}",
                type="invalid",
            )


def _refusal(problems: list) -> ApplicationError:
    return ApplicationError(
        "the move was refused: " + "; ".join(p.msg for p in problems),
        {"status": status_for(problems), "problems": problems_detail(problems)},
        type="transition_refused",
        non_retryable=True,
    )


def _integration(effect: Effect) -> str:
    """The integration a call goes to (its name in DEALFLOW_INTEGRATIONS)."""
    return str(effect.data.get("integration", effect.kind))


def _dedup_key(event: DealEvent) -> str:
    """An event's id, with ``#n`` for its n-th replay from the dead letters (so a replay is
    applied once more, exactly once); a plain id is replay 0, as carried by older runs."""
    return f"{event.event_id}#{event.replay}" if event.replay else event.event_id


def _circuit_open(exc: BaseException) -> CircuitOpenInfo | None:
    """What an activity failure says about its open circuit, if that is what failed it."""
    cause = exc.cause if isinstance(exc, ActivityError) else None
    if not isinstance(cause, ApplicationError) or cause.type != "circuit_open":
        return None
    return CircuitOpenInfo.from_details(cause.details[0] if cause.details else None)
