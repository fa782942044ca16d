"""Health, readiness and metrics for operators."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from api.context import AppContext

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    ctx: AppContext = request.app.state.ctx
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(asyncio.to_thread(ctx.db.ping), timeout=3)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    if ctx.temporal is None:
        checks["temporal"] = "not connected"
    else:
        try:
            await asyncio.wait_for(ctx.temporal.service_client.check_health(), timeout=3)
            checks["temporal"] = "ok"
        except Exception as exc:
            checks["temporal"] = f"unreachable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    if ok:
        return JSONResponse({"status": "ready", "checks": checks})
    return JSONResponse(
        {
            "type": "https://dealflow.dev/problems/unavailable",
            "title": "Service unavailable",
            "status": 503,
            "detail": "not ready: " + ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"),
            "checks": checks,
        },
        status_code=503,
        media_type="application/problem+json",
        headers={"Retry-After": "5"},
    )


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
