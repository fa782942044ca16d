"""``/v1/pipelines``: stages, movement rules and automations, validated, versioned, simulated.

Every change (create, replace, reorder) makes a new immutable version and an audit entry naming
who made it and what changed; activation is audited too. Templates live at
``/v1/pipeline-templates``. Success metrics are computed from the read model (deals and their
history), never from Temporal.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import anyio.from_thread
import pydantic
from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from api.auth import Admin, Ctx, Viewer
from api.problems import ProblemError
from dealflow.ids import new_id
from domain.activation import (
    PendingGoLive,
    effective_activation,
    effective_version,
    is_live,
    pending_go_live,
)
from domain.deal import Problem
from domain.diff import diff_specs
from domain.durations import MAX_DURATION, MAX_DURATION_TEXT, format_duration
from domain.pipeline import PipelineSnapshot, PipelineSpec
from domain.simulation import Script, SimulationError, simulate
from domain.templates import TEMPLATES, apply_template, template_summary
from domain.validation import parse_and_validate, problems_from_validation_error, validate_pipeline
from store.models import AuditEntry, Deal, DealHistory, Pipeline, PipelineVersion
from workflows.golive import GoLiveInput, go_live_workflow_id

router = APIRouter(tags=["pipelines"])
log = logging.getLogger("dealflow.pipelines")
BASE = "/v1/pipelines"


class ActivateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    go_live_at: datetime | None = None
    test_mode: bool = False


class ReorderBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order: list[str]


# --------------------------------------------------------------------------- helpers


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` inlined (for ``openapi_extra``; no recursion)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.rsplit("/", 1)[-1]])
            # A discriminator's mapping names $defs; oneOf alone says the same once inlined.
            return {k: walk(v) for k, v in node.items() if k != "discriminator"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    schema = _inline(model.model_json_schema(by_alias=True))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


PIPELINE_BODY = _body_doc(PipelineSpec)
SCRIPT_BODY = _body_doc(Script)


def _problems_422(
    problems: list[Problem], what: str, prefix: tuple[str, ...] = ("body",)
) -> NoReturn:
    summary = "; ".join(p.msg for p in problems[:5])
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise ProblemError(
        422,
        f"{what} has {len(problems)} problem(s): {summary}{more}",
        errors=[{"loc": [*prefix, *p.loc], "msg": p.msg, "code": p.code} for p in problems],
    )


def _spec_or_422(payload: Any) -> PipelineSpec:
    if not isinstance(payload, dict):
        raise ProblemError(422, "the pipeline must be a JSON object")
    payload, template_problems = apply_template(payload)
    spec, problems = parse_and_validate(payload)
    problems = template_problems + problems
    if problems or spec is None:
        _problems_422(problems, "the pipeline")
    assert spec is not None
    return spec


def _now() -> datetime:
    return datetime.now(UTC)


def _activation(row: Pipeline, now: datetime) -> tuple[str, bool]:
    """The pipeline's ``(status, test_mode)`` in effect at ``now``."""
    return effective_activation(
        row.status, row.test_mode, row.go_live_at, now, row.scheduled_version
    )


def _active_version(row: Pipeline, now: datetime) -> int | None:
    """The version new deals get at ``now`` (``None``: never activated, they get the current)."""
    return effective_version(row.active_version, row.scheduled_version, row.go_live_at, now)


def _pending(row: Pipeline, now: datetime) -> PendingGoLive | None:
    return pending_go_live(
        row.status, row.active_version, row.scheduled_version, row.go_live_at, now
    )


def _pending_out(pending: PendingGoLive | None) -> dict[str, Any] | None:
    if pending is None:
        return None
    return {"version": pending.version, "go_live_at": pending.go_live_at.isoformat()}


def pipeline_out(
    row: Pipeline, version: PipelineVersion, now: datetime | None = None
) -> dict[str, Any]:
    """The pipeline as of ``now``: ``active_version``, ``status`` and ``test_mode`` are the ones
    in effect then (a scheduled version from its ``go_live_at`` on, even if the go-live timer has
    not run yet); ``scheduled`` is the go-live still to come, if any."""
    now = now or _now()
    spec = PipelineSpec.model_validate(version.spec).model_dump(mode="json")
    status, test_mode = _activation(row, now)
    return {
        "id": row.id,
        "version": version.version,
        "current_version": row.current_version,
        "active_version": _active_version(row, now),
        "status": status,
        "test_mode": test_mode,
        "go_live_at": row.go_live_at.isoformat() if row.go_live_at else None,
        "scheduled": _pending_out(_pending(row, now)),
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "version_created_by": version.created_by,
        "version_created_at": version.created_at.isoformat(),
        **spec,
    }


def _pipeline(session, pipeline_id: str) -> Pipeline:  # type: ignore[no-untyped-def]
    row = session.get(Pipeline, pipeline_id)
    if row is None:
        raise ProblemError(404, f"no pipeline {pipeline_id}")
    return row


def _version(session, pipeline_id: str, version: int) -> PipelineVersion:  # type: ignore[no-untyped-def]
    row = session.exec(
        select(PipelineVersion).where(
            PipelineVersion.pipeline_id == pipeline_id, PipelineVersion.version == version
        )
    ).first()
    if row is None:
        raise ProblemError(404, f"pipeline {pipeline_id} has no version {version}")
    return row


def _audit(session, actor: str, action: str, target: str, data: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    session.add(AuditEntry(actor=actor, action=action, target=target, data=data))


def _new_version(
    ctx: Any,
    pipeline_id: str,
    spec: PipelineSpec,
    subject: str,
    via: str,
    base_version: int | None = None,
) -> dict[str, Any]:
    """Store ``spec`` as the pipeline's next version, audited with what changed.

    ``base_version`` is the version ``spec`` was derived from (a reorder): if another change was
    saved since, this one is refused (409) rather than silently undoing it. Two changes saved at
    the same instant cannot both get the same number: the loser gets a 409 too.
    """
    with ctx.db.session() as session:
        row = _pipeline(session, pipeline_id)
        if base_version is not None and row.current_version != base_version:
            raise ProblemError(
                409,
                f"pipeline {pipeline_id} changed while this was being made (version "
                f"{row.current_version}, not {base_version}); fetch it and try again",
            )
        previous = _version(session, pipeline_id, row.current_version)
        diff = diff_specs(previous.spec, spec)
        row.current_version += 1
        row.name = spec.name
        row.updated_at = _now()
        version = PipelineVersion(
            pipeline_id=pipeline_id,
            version=row.current_version,
            spec=spec.model_dump(mode="json"),
            created_by=subject,
        )
        session.add(row)
        session.add(version)
        _audit(
            session,
            subject,
            "pipeline.updated",
            pipeline_id,
            {
                "version": row.current_version,
                "from_version": previous.version,
                "via": via,
                "summary": diff["summary"],
            },
        )
        try:
            session.commit()
        except IntegrityError:
            raise ProblemError(
                409,
                f"another change to pipeline {pipeline_id} was saved at the same time; "
                "fetch it and try again",
            ) from None
        return pipeline_out(row, version)


# --------------------------------------------------------------------------- templates


@router.get("/v1/pipeline-templates")
def templates(_: Viewer) -> dict[str, Any]:
    """The shipped templates: ``"template": "<key>"`` in ``POST /v1/pipelines`` uses one."""
    data = [template_summary(key) for key in TEMPLATES]
    return {"data": data, "has_more": False, "next_cursor": None}


# --------------------------------------------------------------------------- CRUD


@router.post(BASE, status_code=201, openapi_extra=PIPELINE_BODY)
def create(ctx: Ctx, principal: Admin, payload: Any = Body(...)) -> dict[str, Any]:
    spec = _spec_or_422(payload)
    pipeline_id = new_id("pl")
    row = Pipeline(id=pipeline_id, name=spec.name, created_by=principal.subject)
    version = PipelineVersion(
        pipeline_id=pipeline_id,
        version=1,
        spec=spec.model_dump(mode="json"),
        created_by=principal.subject,
    )
    with ctx.db.session() as session:
        session.add(row)
        session.add(version)
        _audit(
            session,
            principal.subject,
            "pipeline.created",
            pipeline_id,
            {"version": 1, "name": spec.name, "template": spec.template},
        )
        session.commit()
    return pipeline_out(row, version)


@router.get(BASE)
def index(ctx: Ctx, _: Viewer) -> dict[str, Any]:
    with ctx.db.session() as session:
        rows = session.exec(select(Pipeline).order_by(Pipeline.id)).all()  # type: ignore[arg-type]
        out = [pipeline_out(r, _version(session, r.id, r.current_version)) for r in rows]
    return {"data": out, "has_more": False, "next_cursor": None}


@router.get(BASE + "/{pipeline_id}")
def show(pipeline_id: str, ctx: Ctx, _: Viewer, version: int | None = None) -> dict[str, Any]:
    with ctx.db.session() as session:
        row = _pipeline(session, pipeline_id)
        return pipeline_out(row, _version(session, pipeline_id, version or row.current_version))


@router.put(BASE + "/{pipeline_id}", openapi_extra=PIPELINE_BODY)
def replace(
    pipeline_id: str, ctx: Ctx, principal: Admin, payload: Any = Body(...)
) -> dict[str, Any]:
    spec = _spec_or_422(payload)
    return _new_version(ctx, pipeline_id, spec, principal.subject, via="put")


@router.post(BASE + "/{pipeline_id}/stages:reorder")
def reorder(pipeline_id: str, ctx: Ctx, principal: Admin, body: ReorderBody) -> dict[str, Any]:
    """A new version with the same stages in ``order`` (every key exactly once)."""
    with ctx.db.session() as session:
        row = _pipeline(session, pipeline_id)
        base_version = row.current_version
        current = PipelineSpec.model_validate(_version(session, pipeline_id, base_version).spec)
    keys = [s.key for s in current.stages]
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, key in enumerate(body.order):
        if key in seen:
            problems.append(
                Problem(
                    code="duplicate_stage_key",
                    loc=["order", i],
                    msg=f"{key!r} is listed twice (also at order[{seen[key]}])",
                )
            )
            continue
        seen[key] = i
        if key not in keys:
            problems.append(
                Problem(
                    code="unknown_stage",
                    loc=["order", i],
                    msg=f"{key!r} is not a stage of this pipeline "
                    f"(stages: {', '.join(repr(k) for k in keys)})",
                )
            )
    for key in keys:
        if key not in seen:
            problems.append(
                Problem(
                    code="missing_stage",
                    loc=["order"],
                    msg=f"stage {key!r} is missing from the order: list every stage once",
                )
            )
    if problems:
        _problems_422(problems, "the order")
    by_key = {s.key: s for s in current.stages}
    spec = current.model_copy(update={"stages": [by_key[k] for k in body.order]})
    reordered = validate_pipeline(spec)
    if reordered:
        # Locations into the new order: stages[i] of the reordered pipeline is order[i].
        mapped = [
            Problem(
                code=p.code,
                loc=["order", p.loc[1], *p.loc[2:]]
                if len(p.loc) > 1 and p.loc[0] == "stages" and isinstance(p.loc[1], int)
                else p.loc,
                msg=p.msg,
            )
            for p in reordered
        ]
        _problems_422(mapped, "the reordered pipeline")
    return _new_version(
        ctx, pipeline_id, spec, principal.subject, via="stages:reorder", base_version=base_version
    )


# --------------------------------------------------------------------------- versions


@router.get(BASE + "/{pipeline_id}/versions")
def versions(pipeline_id: str, ctx: Ctx, _: Viewer) -> dict[str, Any]:
    """Every version, oldest first, with who made it, when, and what it changed; ``active``: the
    one new deals get now, ``scheduled``: the one that goes live at the pending go-live."""
    now = _now()
    with ctx.db.session() as session:
        row = _pipeline(session, pipeline_id)
        rows = session.exec(
            select(PipelineVersion)
            .where(PipelineVersion.pipeline_id == pipeline_id)
            .order_by(col(PipelineVersion.version))
        ).all()
    active = _active_version(row, now)
    pending = _pending(row, now)
    out = []
    previous: PipelineVersion | None = None
    for version in rows:
        out.append(
            {
                "version": version.version,
                "created_by": version.created_by,
                "created_at": version.created_at.isoformat(),
                "current": version.version == row.current_version,
                "active": version.version == active,
                "scheduled": pending is not None and version.version == pending.version,
                "summary": diff_specs(previous.spec, version.spec)["summary"]
                if previous is not None
                else "created",
            }
        )
        previous = version
    return {"data": out, "has_more": False, "next_cursor": None}


@router.get(BASE + "/{pipeline_id}/versions/{version}")
def show_version(pipeline_id: str, version: int, ctx: Ctx, _: Viewer) -> dict[str, Any]:
    with ctx.db.session() as session:
        row = _pipeline(session, pipeline_id)
        return pipeline_out(row, _version(session, pipeline_id, version))


@router.get(BASE + "/{pipeline_id}/diff")
def diff(
    pipeline_id: str,
    ctx: Ctx,
    _: Viewer,
    from_: int = Query(..., alias="from", ge=1),
    to: int | None = Query(None, ge=1),
) -> dict[str, Any]:
    """What changed from version ``from`` to version ``to`` (default: the current one)."""
    with ctx.db.session() as session:
        row = _pipeline(session, pipeline_id)
        before = _version(session, pipeline_id, from_)
        after = _version(session, pipeline_id, to or row.current_version)
    return {
        "pipeline_id": pipeline_id,
        "from": before.version,
        "to": after.version,
        "from_created_by": before.created_by,
        "to_created_by": after.created_by,
        "to_created_at": after.created_at.isoformat(),
        **diff_specs(before.spec, after.spec),
    }


@router.get(BASE + "/{pipeline_id}/audit")
def audit(pipeline_id: str, ctx: Ctx, _: Viewer) -> dict[str, Any]:
    """Who changed or activated the pipeline, when, and what they did (oldest first)."""
    with ctx.db.session() as session:
        _pipeline(session, pipeline_id)
        rows = session.exec(
            select(AuditEntry)
            .where(AuditEntry.target == pipeline_id, col(AuditEntry.action).startswith("pipeline."))
            .order_by(col(AuditEntry.id))
        ).all()
    data = [
        {"at": r.at.isoformat(), "actor": r.actor, "action": r.action, "data": r.data} for r in rows
    ]
    return {"data": data, "has_more": False, "next_cursor": None}


# --------------------------------------------------------------------------- activation


@router.post(BASE + "/{pipeline_id}/activate")
def activate(
    pipeline_id: str, ctx: Ctx, principal: Admin, body: ActivateBody | None = None
) -> dict[str, Any]:
    """Make the current version the one new deals get, now or at ``go_live_at``.

    ``test_mode: true`` records effects instead of running them (status ``test``). A future
    ``go_live_at`` on a pipeline that is live on another version (``active`` or ``test``)
    schedules the current version: the live version stays in effect, with its status, until
    that instant, then the scheduled one takes over (``active``, test mode off); ``scheduled``
    in the answer shows it meanwhile. On a pipeline not live yet a future ``go_live_at`` makes
    the status ``scheduled`` (or ``test``, with test mode) until that instant and ``active``
    (test mode off) from then on. On a pipeline live on this very version a future
    ``go_live_at`` is a 409: it would take the live version off the air until then (PUT a new
    version first to schedule a change). Activating again without a future ``go_live_at``
    takes effect at once, switches test mode off or on and drops any pending go-live.

    ``go_live_at`` needs an offset and is kept in UTC; it may be at most 100 years ahead.
    """
    body = body or ActivateBody()
    now = _now()
    go_live_at = _go_live_at(body.go_live_at, now)
    later = go_live_at is not None and go_live_at > now
    with ctx.db.session() as session:
        row = _pipeline(session, pipeline_id)
        before = _pending(row, now)
        live_version = _active_version(row, now)
        live_status, live_test_mode = _activation(row, now)
        live = is_live(row.status, row.active_version, row.scheduled_version, row.go_live_at, now)
        if later and live and live_version == row.current_version:
            raise ProblemError(
                409,
                f"version {live_version} of pipeline {pipeline_id} is already live "
                f"({live_status}): a future go_live_at would take it off the air until then. "
                "To schedule a change, PUT a new version first and activate that one with "
                "go_live_at; to switch test mode, activate without go_live_at",
                errors=[
                    {
                        "loc": ["body", "go_live_at"],
                        "msg": f"version {live_version} is already live",
                        "code": "already_live",
                    }
                ],
            )
        if later and live and live_version != row.current_version:
            if body.test_mode and not live_test_mode:
                raise ProblemError(
                    422,
                    f"pipeline {pipeline_id} is live on version {live_version}, which stays "
                    f"live until go_live_at; version {row.current_version} then takes over "
                    "with test mode off, so test mode cannot apply to it before. Try it with "
                    "POST …/simulate, or activate it in test mode now (without go_live_at)",
                    errors=[
                        {
                            "loc": ["body", "test_mode"],
                            "msg": "not with a future go_live_at on a live pipeline",
                            "code": "test_mode_before_go_live",
                        }
                    ],
                )
            # The live version stays as it is in effect now (a go-live reached that the timer
            # has not recorded yet is recorded here, before go_live_at moves).
            row.active_version = live_version
            row.status = live_status
            row.test_mode = live_test_mode
            row.scheduled_version = row.current_version
        else:
            row.active_version = row.current_version
            row.scheduled_version = None
            row.test_mode = body.test_mode
            if later:
                row.status = "scheduled"
            elif body.test_mode:
                row.status = "test"
            else:
                row.status = "active"
        row.go_live_at = go_live_at
        row.updated_at = now
        session.add(row)
        status, test_mode = _activation(row, now)
        after = _pending(row, now)
        data: dict[str, Any] = {
            "version": row.current_version,
            "status": status,
            "test_mode": test_mode,
            "go_live_at": go_live_at.isoformat() if go_live_at else None,
            "active_version": _active_version(row, now),
            "scheduled": _pending_out(after),
        }
        if before is not None and before != after:
            data["replaced_schedule"] = _pending_out(before)
        _audit(session, principal.subject, "pipeline.activated", pipeline_id, data)
        session.commit()
        out = pipeline_out(row, _version(session, pipeline_id, row.current_version), now)
    if after is not None:
        anyio.from_thread.run(_schedule_go_live, ctx, pipeline_id, after.version, after.go_live_at)
    elif before is not None:
        anyio.from_thread.run(_cancel_go_live, ctx, pipeline_id)
    return out


def _go_live_at(value: datetime | None, now: datetime) -> datetime | None:
    """``go_live_at`` in UTC; a 422 without an offset, out of the representable range or more
    than 100 years ahead (a go-live timer that long is more than Temporal can keep)."""
    if value is None:
        return None

    def refuse(detail: str, msg: str) -> NoReturn:
        raise ProblemError(422, detail, errors=[{"loc": ["body", "go_live_at"], "msg": msg}])

    if value.tzinfo is None or value.utcoffset() is None:
        refuse(
            "go_live_at needs a time zone (RFC 3339, e.g. 2025-01-06T09:00:00Z)",
            "a time zone is required",
        )
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        refuse(
            f"go_live_at {value.isoformat()} is not an instant of the years 1 to 9999 in UTC",
            "out of range",
        )
    if utc - now > MAX_DURATION:
        refuse(
            f"go_live_at {utc.isoformat()} is more than {MAX_DURATION_TEXT} ahead",
            f"at most {MAX_DURATION_TEXT} ahead",
        )
    return utc


async def _schedule_go_live(ctx: Any, pipeline_id: str, version: int, at: datetime) -> None:
    """Start (or replace) the timer workflow that carries the go-live out."""
    if ctx.temporal is None:
        log.warning("Temporal not connected: go-live of %s is derived on read only", pipeline_id)
        return
    try:
        await ctx.temporal.start_workflow(
            "PipelineGoLiveWorkflow",
            GoLiveInput(pipeline_id=pipeline_id, version=version, go_live_at=at),
            id=go_live_workflow_id(pipeline_id),
            task_queue=ctx.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.TERMINATE_EXISTING,
            static_summary=f"Go-live of pipeline {pipeline_id} v{version} at {at.isoformat()}",
        )
    except Exception as exc:  # the read-side derivation still makes it live on time
        log.warning("could not schedule the go-live of %s: %s", pipeline_id, exc)


async def _cancel_go_live(ctx: Any, pipeline_id: str) -> None:
    """Cancel the timer of a go-live that is no longer wanted. If this fails (Temporal down),
    the timer's activity finds the schedule changed and does nothing."""
    if ctx.temporal is None:
        return
    try:
        await ctx.temporal.get_workflow_handle(go_live_workflow_id(pipeline_id)).cancel()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:  # NOT_FOUND: it has finished already
            log.warning("could not cancel the go-live of %s: %s", pipeline_id, exc.message)
    except Exception as exc:
        log.warning("could not cancel the go-live of %s: %s", pipeline_id, exc)


# --------------------------------------------------------------------------- simulation


@router.post(BASE + "/{pipeline_id}/simulate", openapi_extra=SCRIPT_BODY)
def simulate_route(
    pipeline_id: str,
    ctx: Ctx,
    _: Viewer,
    version: int | None = Query(None, ge=1),
    payload: Any = Body(...),
) -> dict[str, Any]:
    """Run a scripted deal path through the deal state machine: nothing is stored or sent.

    Uses the current version (the one being edited) unless ``?version=`` names another.
    """
    if not isinstance(payload, dict):
        raise ProblemError(422, "the script must be a JSON object")
    try:
        script = Script.model_validate(payload)
    except pydantic.ValidationError as exc:
        _problems_422(problems_from_validation_error(exc, root=Script), "the script")
    with ctx.db.session() as session:
        row = _pipeline(session, pipeline_id)
        found = _version(session, pipeline_id, version or row.current_version)
    _, test_mode = _activation(row, _now())
    snapshot = PipelineSnapshot(
        pipeline_id=pipeline_id,
        version=found.version,
        spec=PipelineSpec.model_validate(found.spec),
        test_mode=test_mode,
        go_live_at=row.go_live_at,
    )
    try:
        return simulate(snapshot, script, start_at=_now().replace(microsecond=0))
    except SimulationError as exc:
        _problems_422(exc.problems, "the script")


# --------------------------------------------------------------------------- metrics


@router.get(BASE + "/{pipeline_id}/metrics")
def metrics(pipeline_id: str, ctx: Ctx, _: Viewer) -> dict[str, Any]:
    """Success metrics of the pipeline's deals, from the read model (all versions together)."""
    now = _now()
    with ctx.db.session() as session:
        row = _pipeline(session, pipeline_id)
        spec = PipelineSpec.model_validate(_version(session, pipeline_id, row.current_version).spec)
        specs = {
            v.version: PipelineSpec.model_validate(v.spec)
            for v in session.exec(
                select(PipelineVersion).where(PipelineVersion.pipeline_id == pipeline_id)
            ).all()
        }
        deals = session.exec(select(Deal).where(Deal.pipeline_id == pipeline_id)).all()
        history = session.exec(
            select(DealHistory)
            .join(Deal, col(Deal.deal_id) == col(DealHistory.deal_id))
            .where(
                Deal.pipeline_id == pipeline_id,
                col(DealHistory.kind).in_(["deal_created", "stage_changed", "sla_breached"]),
            )
            .order_by(col(DealHistory.deal_id), col(DealHistory.seq))
        ).all()
    return {"pipeline_id": pipeline_id, **compute_metrics(spec, specs, deals, history, now)}


def compute_metrics(
    spec: PipelineSpec,
    specs: dict[int, PipelineSpec],
    deals: list[Deal] | Any,
    history: list[DealHistory] | Any,
    now: datetime,
) -> dict[str, Any]:
    """The metrics document (pure: the rows come in, the numbers go out).

    - ``open_deals``: open deals in each stage now.
    - ``conversion_rate`` of stage N: of the deals that entered N, the share that later entered
      a later open stage or a ``won`` stage (reaching ``lost`` is not a conversion).
    - ``avg_time_in_stage``: over completed stays (entered, then left), from the history.
    - ``sla``: of the entries into a stage that had an SLA (in the deal's version), the share
      without an ``sla_breached`` before the deal left it; stays still running and not breached
      are ``in_progress`` and not counted.
    - ``rotting``: open deals rotting now; ``win_rate``: won / (won + lost).
    """
    order = {s.key: i for i, s in enumerate(spec.stages)}
    outcome = {s.key: s.outcome for s in spec.stages}
    by_deal: dict[str, list[DealHistory]] = defaultdict(list)
    for entry in history:
        by_deal[entry.deal_id].append(entry)
    deal_rows = {d.deal_id: d for d in deals}

    entered: dict[str, int] = defaultdict(int)
    converted: dict[str, int] = defaultdict(int)
    durations: dict[str, list[float]] = defaultdict(list)
    sla_met: dict[str, int] = defaultdict(int)
    sla_breached: dict[str, int] = defaultdict(int)
    sla_running: dict[str, int] = defaultdict(int)

    def is_later(stage: str, than: str) -> bool:
        if stage not in order or than not in order:
            return False
        if outcome.get(stage) == "lost":
            return False
        return order[stage] > order[than]

    for deal_id, entries in by_deal.items():
        deal = deal_rows.get(deal_id)
        deal_spec = specs.get(deal.pipeline_version, spec) if deal is not None else spec
        stays: list[dict[str, Any]] = []  # {"stage", "at", "breached"}
        for entry in entries:
            if entry.kind == "deal_created" and entry.data.get("stage"):
                stays.append({"stage": entry.data["stage"], "at": entry.at, "breached": False})
            elif entry.kind == "stage_changed" and entry.data.get("to"):
                stays.append({"stage": entry.data["to"], "at": entry.at, "breached": False})
            elif entry.kind == "sla_breached" and stays:
                if entry.data.get("stage") in (None, stays[-1]["stage"]):
                    stays[-1]["breached"] = True
        counted: set[str] = set()
        for i, stay in enumerate(stays):
            stage = stay["stage"]
            nxt = stays[i + 1] if i + 1 < len(stays) else None
            if nxt is not None:
                durations[stage].append((nxt["at"] - stay["at"]).total_seconds())
            if stage not in counted:  # conversion counts deals, not re-entries
                counted.add(stage)
                entered[stage] += 1
                if any(is_later(s["stage"], stage) for s in stays[i + 1 :]):
                    converted[stage] += 1
            stage_spec = deal_spec.stage(stage)
            if stage_spec is None or stage_spec.sla is None or stage_spec.outcome:
                continue
            if stay["breached"]:
                sla_breached[stage] += 1
            elif nxt is not None:
                sla_met[stage] += 1
            else:
                sla_running[stage] += 1

    stage_keys = [s.key for s in spec.stages]
    # Stages deals are (or were) in that the current version no longer has.
    extra = sorted(k for k in {d.stage for d in deals} | set(entered) if k not in order)

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    open_by_stage: dict[str, int] = defaultdict(int)
    rotting_by_stage: dict[str, int] = defaultdict(int)
    counts = {"total": 0, "open": 0, "won": 0, "lost": 0}
    for deal in deals:
        counts["total"] += 1
        counts[deal.status] = counts.get(deal.status, 0) + 1
        if deal.status == "open":
            open_by_stage[deal.stage] += 1
            if deal.is_rotting:
                rotting_by_stage[deal.stage] += 1

    stages_out = []
    for key in [*stage_keys, *extra]:
        stage_spec = spec.stage(key)
        times = durations.get(key, [])
        avg = sum(times) / len(times) if times else None
        has_sla = sla_met[key] + sla_breached[key] + sla_running[key] > 0 or (
            stage_spec is not None and stage_spec.sla is not None
        )
        is_outcome = stage_spec is not None and stage_spec.outcome is not None
        stages_out.append(
            {
                "key": key,
                "name": stage_spec.name if stage_spec else key,
                "outcome": stage_spec.outcome if stage_spec else None,
                "in_current_version": stage_spec is not None,
                "open_deals": open_by_stage[key],
                "rotting": rotting_by_stage[key],
                "entered": entered[key],
                "converted": None if is_outcome else converted[key],
                "conversion_rate": None if is_outcome else ratio(converted[key], entered[key]),
                "avg_time_in_stage_seconds": round(avg, 3) if avg is not None else None,
                "avg_time_in_stage": format_duration(timedelta(seconds=avg)) if avg else None,
                "completed_stays": len(times),
                "sla": {
                    "met": sla_met[key],
                    "breached": sla_breached[key],
                    "in_progress": sla_running[key],
                    "compliance": ratio(sla_met[key], sla_met[key] + sla_breached[key]),
                }
                if has_sla
                else None,
            }
        )
    met, breached = sum(sla_met.values()), sum(sla_breached.values())
    return {
        "computed_at": now.isoformat(),
        "deals": counts,
        "win_rate": ratio(counts["won"], counts["won"] + counts["lost"]),
        "rotting": sum(rotting_by_stage.values()),
        "sla_compliance": {
            "met": met,
            "breached": breached,
            "in_progress": sum(sla_running.values()),
            "rate": ratio(met, met + breached),
        },
        "stages": stages_out,
    }
