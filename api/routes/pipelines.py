"""``/v1/pipelines``: stages, movement rules and automations, validated and versioned."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict
from sqlmodel import select

from api.auth import Admin, Ctx, Viewer
from api.problems import ProblemError
from dealflow.ids import new_id
from domain.pipeline import PipelineSpec
from domain.validation import parse_and_validate
from store.models import Pipeline, PipelineVersion

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])


class ActivateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    go_live_at: datetime | None = None
    test_mode: bool = False


def _spec_or_422(payload: Any) -> PipelineSpec:
    if not isinstance(payload, dict):
        raise ProblemError(422, "the pipeline must be a JSON object")
    spec, problems = parse_and_validate(payload)
    if problems or spec is None:
        summary = "; ".join(p.msg for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ProblemError(
            422,
            f"the pipeline has {len(problems)} problem(s): {summary}{more}",
            errors=[{"loc": ["body", *p.loc], "msg": p.msg, "code": p.code} for p in problems],
        )
    return spec


def pipeline_out(row: Pipeline, version: PipelineVersion) -> dict[str, Any]:
    spec = PipelineSpec.model_validate(version.spec).model_dump(mode="json")
    return {
        "id": row.id,
        "version": version.version,
        "current_version": row.current_version,
        "active_version": row.active_version,
        "status": row.status,
        "test_mode": row.test_mode,
        "go_live_at": row.go_live_at.isoformat() if row.go_live_at else None,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "version_created_by": version.created_by,
        **spec,
    }


def _version(session, pipeline_id: str, version: int) -> PipelineVersion:  # type: ignore[no-untyped-def]
    row = session.exec(
        select(PipelineVersion).where(
            PipelineVersion.pipeline_id == pipeline_id, PipelineVersion.version == version
        )
    ).first()
    if row is None:
        raise ProblemError(404, f"pipeline {pipeline_id} has no version {version}")
    return row


@router.post("", status_code=201)
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
        session.commit()
    return pipeline_out(row, version)


@router.get("")
def index(ctx: Ctx, _: Viewer) -> dict[str, Any]:
    with ctx.db.session() as session:
        rows = session.exec(select(Pipeline).order_by(Pipeline.id)).all()  # type: ignore[arg-type]
        out = [pipeline_out(r, _version(session, r.id, r.current_version)) for r in rows]
    return {"data": out, "has_more": False, "next_cursor": None}


@router.get("/{pipeline_id}")
def show(pipeline_id: str, ctx: Ctx, _: Viewer, version: int | None = None) -> dict[str, Any]:
    with ctx.db.session() as session:
        row = session.get(Pipeline, pipeline_id)
        if row is None:
            raise ProblemError(404, f"no pipeline {pipeline_id}")
        return pipeline_out(row, _version(session, pipeline_id, version or row.current_version))


@router.put("/{pipeline_id}")
def replace(
    pipeline_id: str, ctx: Ctx, principal: Admin, payload: Any = Body(...)
) -> dict[str, Any]:
    spec = _spec_or_422(payload)
    with ctx.db.session() as session:
        row = session.get(Pipeline, pipeline_id)
        if row is None:
            raise ProblemError(404, f"no pipeline {pipeline_id}")
        row.current_version += 1
        row.name = spec.name
        row.updated_at = datetime.now(UTC)
        version = PipelineVersion(
            pipeline_id=pipeline_id,
            version=row.current_version,
            spec=spec.model_dump(mode="json"),
            created_by=principal.subject,
        )
        session.add(row)
        session.add(version)
        session.commit()
    return pipeline_out(row, version)


@router.post("/{pipeline_id}/activate")
def activate(
    pipeline_id: str, ctx: Ctx, _: Admin, body: ActivateBody | None = None
) -> dict[str, Any]:
    body = body or ActivateBody()
    now = datetime.now(UTC)
    with ctx.db.session() as session:
        row = session.get(Pipeline, pipeline_id)
        if row is None:
            raise ProblemError(404, f"no pipeline {pipeline_id}")
        row.active_version = row.current_version
        row.test_mode = body.test_mode
        row.go_live_at = body.go_live_at
        if body.test_mode:
            row.status = "test"
        elif body.go_live_at and body.go_live_at > now:
            row.status = "scheduled"
        else:
            row.status = "active"
        row.updated_at = now
        session.add(row)
        session.commit()
        return pipeline_out(row, _version(session, pipeline_id, row.current_version))
