"""Bulk migrations of existing deals to another pipeline or version, with a stage mapping.

``POST /v1/pipelines/{id}/migrations`` validates the mapping against the read model (every
problem at once), then either answers a dry-run report (the default: nothing changes) or starts
``MigrationWorkflow`` (``migration-{id}``), which moves the deals in throttled batches through
each deal workflow. ``GET /v1/migrations/{id}`` shows the progress; ``pause``, ``resume`` and
``cancel`` take effect between two batches.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func
from sqlmodel import col, select
from starlette.responses import JSONResponse
from temporalio.service import RPCError, RPCStatusCode

from api.auth import Admin, Ctx, Viewer
from api.problems import ProblemError
from dealflow.ids import new_id
from domain.activation import effective_version
from domain.pipeline import PipelineSpec
from store.models import Deal, Migration, Pipeline, PipelineVersion
from workflows.migration import MigrationInput, Progress, migration_workflow_id

router = APIRouter(tags=["migrations"])

FINISHED = ("completed", "cancelled", "failed", "dry_run")


class MigrationFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: str | None = Field(None, min_length=1, max_length=64)
    status: Literal["open", "won", "lost"] | None = None


class MigrationBody(BaseModel):
    """``stage_map`` maps each stage of the source pipeline that deals are in to a stage of the
    target (``to_pipeline_id``, default the same pipeline; ``to_version``, default the version
    new deals get now: its active one, or a scheduled one once its go-live is reached; else its
    current one)."""

    model_config = ConfigDict(extra="forbid")
    to_pipeline_id: str | None = Field(None, min_length=1, max_length=40)
    to_version: int | None = Field(None, ge=1)
    stage_map: dict[str, str] = Field(default_factory=dict)
    filter: MigrationFilter | None = None
    dry_run: bool = True
    batch_size: int = Field(100, ge=1, le=1000)
    rate_per_second: float = Field(50, gt=0, le=10_000)


def _now() -> datetime:
    return datetime.now(UTC)


def migration_view(row: Migration) -> dict[str, Any]:
    processed = row.migrated + row.skipped + row.failed
    rate = None
    if row.started_at is not None and row.status != "dry_run":
        elapsed = ((row.finished_at or _now()) - row.started_at).total_seconds()
        rate = round(processed / elapsed, 1) if elapsed > 0 else None
    out: dict[str, Any] = {
        "id": row.id,
        "status": row.status,
        "pipeline_id": row.source_pipeline_id,
        "to_pipeline_id": row.target_pipeline_id,
        "to_version": row.target_version,
        "stage_map": row.stage_map,
        "filter": row.filter,
        "batch_size": row.batch_size,
        "rate_per_second": row.rate_per_second,
        "total": row.total,
        "migrated": row.migrated,
        "skipped": row.skipped,
        "failed": row.failed,
        "errors": row.errors,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "deals_per_second": rate,
    }
    if row.report is not None:
        out.update(row.report)
    return out


# --------------------------------------------------------------------------- validation


def _plan(session, pipeline_id: str, body: MigrationBody) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Check the request against the pipelines and the read model; count the deals per stage."""
    source = session.get(Pipeline, pipeline_id)
    if source is None:
        raise ProblemError(404, f"no pipeline {pipeline_id}")
    problems: list[dict[str, Any]] = []
    target_id = body.to_pipeline_id or pipeline_id
    target = source if target_id == pipeline_id else session.get(Pipeline, target_id)
    target_version: int | None = None
    target_stages: set[str] | None = None
    if target is None:
        problems.append(
            {
                "loc": ["body", "to_pipeline_id"],
                "msg": f"no pipeline {target_id}",
                "code": "unknown",
            }
        )
    else:
        in_effect = effective_version(
            target.active_version, target.scheduled_version, target.go_live_at, _now()
        )
        target_version = body.to_version or in_effect or target.current_version
        version = session.exec(
            select(PipelineVersion).where(
                PipelineVersion.pipeline_id == target_id,
                PipelineVersion.version == target_version,
            )
        ).first()
        if version is None:
            problems.append(
                {
                    "loc": ["body", "to_version"],
                    "msg": f"pipeline {target_id} has no version {target_version} "
                    f"(its versions: 1..{target.current_version})",
                    "code": "unknown",
                }
            )
        else:
            target_stages = {s.key for s in PipelineSpec.model_validate(version.spec).stages}

    known_source: set[str] = set()
    for spec in session.exec(
        select(PipelineVersion.spec).where(PipelineVersion.pipeline_id == pipeline_id)
    ).all():
        known_source |= {s.get("key") for s in spec.get("stages", [])}
    query = select(Deal.stage, func.count()).where(Deal.pipeline_id == pipeline_id)
    flt = body.filter or MigrationFilter()
    if flt.stage is not None:
        query = query.where(Deal.stage == flt.stage)
    if flt.status is not None:
        query = query.where(Deal.status == flt.status)
    counts = {stage: n for stage, n in session.exec(query.group_by(Deal.stage)).all()}
    known_source |= set(counts)

    if flt.stage is not None and flt.stage not in known_source:
        problems.append(
            {
                "loc": ["body", "filter", "stage"],
                "msg": f"stage '{flt.stage}' is not a stage of pipeline {pipeline_id}",
                "code": "unknown_stage",
            }
        )
    for old, new in body.stage_map.items():
        if old not in known_source:
            problems.append(
                {
                    "loc": ["body", "stage_map", old],
                    "msg": f"'{old}' is not a stage of pipeline {pipeline_id} "
                    f"(stages: {', '.join(sorted(known_source))})",
                    "code": "unknown_source_stage",
                }
            )
        if target_stages is not None and new not in target_stages:
            problems.append(
                {
                    "loc": ["body", "stage_map", old],
                    "msg": f"'{new}' is not a stage of pipeline {target_id} version "
                    f"{target_version} (stages: {', '.join(sorted(target_stages))})",
                    "code": "unknown_target_stage",
                }
            )
    unmappable = [
        {"stage": stage, "count": n}
        for stage, n in sorted(counts.items())
        if stage not in body.stage_map
    ]
    if not body.dry_run:
        for item in unmappable:
            problems.append(
                {
                    "loc": ["body", "stage_map"],
                    "msg": f"{item['count']} deal(s) are in stage '{item['stage']}', which the "
                    "stage map does not map to a target stage",
                    "code": "unmapped_stage",
                }
            )
    if problems:
        summary = "; ".join(p["msg"] for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ProblemError(
            422, f"the migration has {len(problems)} problem(s): {summary}{more}", errors=problems
        )
    assert target_version is not None
    by_stage = {
        stage: {"to": body.stage_map[stage], "count": n}
        for stage, n in sorted(counts.items())
        if stage in body.stage_map
    }
    return {
        "target_id": target_id,
        "target_version": target_version,
        "total": sum(v["count"] for v in by_stage.values()),
        "by_stage": by_stage,
        "unmappable": unmappable,
        "filter": flt.model_dump(exclude_none=True),
    }


def _create(ctx: Ctx, pipeline_id: str, body: MigrationBody, subject: str) -> Migration:
    now = _now()
    with ctx.db.session() as session:
        plan = _plan(session, pipeline_id, body)
        if not body.dry_run:
            busy = session.exec(
                select(Migration.id).where(
                    Migration.source_pipeline_id == pipeline_id,
                    col(Migration.status).in_(["running", "paused"]),
                )
            ).first()
            if busy is not None:
                raise ProblemError(
                    409,
                    f"migration {busy} of pipeline {pipeline_id} is still running; "
                    "wait for it or cancel it first",
                )
        row = Migration(
            id=new_id("mig"),
            source_pipeline_id=pipeline_id,
            target_pipeline_id=plan["target_id"],
            target_version=plan["target_version"],
            stage_map=dict(body.stage_map),
            filter=plan["filter"],
            dry_run=body.dry_run,
            batch_size=body.batch_size,
            rate_per_second=body.rate_per_second,
            status="dry_run" if body.dry_run else "running",
            total=plan["total"],
            report=(
                {"by_stage": plan["by_stage"], "unmappable": plan["unmappable"]}
                if body.dry_run
                else None
            ),
            created_by=subject,
            created_at=now,
            started_at=None if body.dry_run else now,
            updated_at=now,
        )
        session.add(row)
        session.commit()
    return row


def _load(ctx: Ctx, migration_id: str) -> Migration:
    with ctx.db.session() as session:
        row = session.get(Migration, migration_id)
    if row is None:
        raise ProblemError(404, f"no migration {migration_id}")
    return row


def _mark_failed(ctx: Ctx, migration_id: str, reason: str) -> None:
    with ctx.db.session() as session:
        row = session.get(Migration, migration_id)
        if row is not None:
            row.status = "failed"
            row.finished_at = _now()
            row.errors = [{"deal_id": None, "outcome": "failed", "reason": reason}]
            session.add(row)
            session.commit()


# --------------------------------------------------------------------------- routes


@router.post(
    "/v1/pipelines/{pipeline_id}/migrations",
    responses={
        200: {"description": "dry run: what would move, nothing changed"},
        202: {"description": "started"},
        409: {},
        422: {},
    },
)
async def create_migration(
    pipeline_id: str, body: MigrationBody, ctx: Ctx, principal: Admin
) -> JSONResponse:
    """Move the pipeline's existing deals (those that exist now) to another pipeline or
    version. ``dry_run`` (the default) only reports what would move; ``dry_run: false`` starts
    the migration and answers 202."""
    client = None if body.dry_run else ctx.client()  # 503 before anything is stored
    row = await asyncio.to_thread(_create, ctx, pipeline_id, body, principal.subject)
    if body.dry_run:
        view = migration_view(row)
        return JSONResponse(
            {
                "id": row.id,
                "status": "dry_run",
                "total": row.total,
                "to_pipeline_id": row.target_pipeline_id,
                "to_version": row.target_version,
                "by_stage": view["by_stage"],
                "unmappable": view["unmappable"],
            }
        )
    assert client is not None and row.started_at is not None
    flt = body.filter or MigrationFilter()
    try:
        await client.start_workflow(
            "MigrationWorkflow",
            MigrationInput(
                migration_id=row.id,
                source_pipeline_id=pipeline_id,
                target_pipeline_id=row.target_pipeline_id,
                target_version=row.target_version,
                stage_map=row.stage_map,
                filter_stage=flt.stage,
                filter_status=flt.status,
                created_before=row.started_at,
                batch_size=row.batch_size,
                rate_per_second=row.rate_per_second,
                progress=Progress(total=row.total),
            ),
            id=migration_workflow_id(row.id),
            task_queue=ctx.settings.task_queue,
            static_summary=f"Migration of pipeline {pipeline_id} deals "
            f"to {row.target_pipeline_id} v{row.target_version}",
        )
    except RPCError as exc:
        await asyncio.to_thread(_mark_failed, ctx, row.id, f"could not start: {exc.message}")
        raise ProblemError(
            503,
            f"Temporal did not start the migration: {exc.message}",
            headers={"Retry-After": "2"},
        ) from None
    return JSONResponse(
        {**migration_view(row), "status": "running"},
        status_code=202,
        headers={"Location": f"/v1/migrations/{row.id}"},
    )


@router.get("/v1/migrations")
def index(
    ctx: Ctx,
    _: Viewer,
    pipeline_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """The newest migrations first."""
    query = select(Migration)
    if pipeline_id is not None:
        query = query.where(Migration.source_pipeline_id == pipeline_id)
    query = query.order_by(col(Migration.created_at).desc(), col(Migration.id).desc())
    with ctx.db.session() as session:
        rows = session.exec(query.limit(limit)).all()
    return {"data": [migration_view(r) for r in rows], "has_more": len(rows) == limit}


@router.get("/v1/migrations/{migration_id}")
def show(migration_id: str, ctx: Ctx, _: Viewer) -> dict[str, Any]:
    """Progress as of the last finished batch (``deals_per_second`` over the whole run)."""
    return migration_view(_load(ctx, migration_id))


async def _signal(ctx: Ctx, migration_id: str, name: str) -> JSONResponse:
    row = await asyncio.to_thread(_load, ctx, migration_id)
    if row.status in FINISHED:
        raise ProblemError(409, f"migration {migration_id} is {row.status}; it cannot {name}")
    handle = ctx.client().get_workflow_handle(migration_workflow_id(migration_id))
    try:
        await handle.signal(name)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise ProblemError(409, f"migration {migration_id} has finished") from None
        raise ProblemError(
            503, f"Temporal did not answer: {exc.message}", headers={"Retry-After": "2"}
        ) from None
    return JSONResponse({**migration_view(row), "requested": name}, status_code=202)


@router.post("/v1/migrations/{migration_id}/pause", status_code=202)
async def pause(migration_id: str, ctx: Ctx, _: Admin) -> JSONResponse:
    """Stop after the batch in progress (``status`` becomes ``paused`` then)."""
    return await _signal(ctx, migration_id, "pause")


@router.post("/v1/migrations/{migration_id}/resume", status_code=202)
async def resume(migration_id: str, ctx: Ctx, _: Admin) -> JSONResponse:
    return await _signal(ctx, migration_id, "resume")


@router.post("/v1/migrations/{migration_id}/cancel", status_code=202)
async def cancel(migration_id: str, ctx: Ctx, _: Admin) -> JSONResponse:
    """Stop for good after the batch in progress; deals already moved stay moved."""
    return await _signal(ctx, migration_id, "cancel")
