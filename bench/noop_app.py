"""The baseline of the ingress benchmark: a FastAPI POST endpoint that reads the body and
answers 202, served exactly like the real API (uvicorn, one process, uvloop + httptools)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import Response

app = FastAPI()


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/webhooks/{source_id}")
async def noop(source_id: str, request: Request) -> Response:
    await request.body()
    return Response(
        b'{"event_id":"evt_noop","status":"accepted"}', 202, media_type="application/json"
    )
