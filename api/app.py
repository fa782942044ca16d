"""The FastAPI application: ingress, admin API, read model and operations endpoints."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import problems
from api.body_limit import limit_body
from api.context import AppContext
from api.ingress.clientip import parse_network
from api.ingress.limits import LocalLimiter
from api.ingress.writer import EventWriter
from api.openapi import build_openapi
from api.path_guard import nul_in
from api.problems import send_problem
from api.relay import Relay
from api.routes import (
    approvals,
    deals,
    events,
    keys,
    migrations,
    ops,
    pipelines,
    sources,
    webhooks,
)
from api.routes.dead_letters import router as dead_letters_router
from api.routes.webhooks import is_ingress, serve_ingress
from api.sources_cache import SourceCache
from dealflow.crypto import SecretBox
from dealflow.local import ensure_secret
from dealflow.prometheus import use_dealflow_names
from dealflow.settings import Settings
from dealflow.temporal import connect, ensure_search_attributes
from store.db import Database
from store.migrate import upgrade

log = logging.getLogger("dealflow.api")

DESCRIPTION = """dealflow receives signed webhooks, stores each one durably before answering,
and turns it into durable Temporal work: one workflow per deal, enforcing its pipeline's rules.

Every endpoint but `/v1/webhooks/*`, `/healthz`, `/readyz` and `/metrics` needs
`Authorization: Bearer <key>`. Errors are RFC 9457 problem documents."""


def build_context(settings: Settings) -> AppContext:
    secret_key = settings.secret_key or ensure_secret(settings.data_dir, "secret_key")
    admin_token = settings.admin_token or ensure_secret(
        settings.data_dir, "admin_token", prefix="dfa_"
    )
    db = Database(settings.effective_database_url)
    box = SecretBox(secret_key)
    ctx = AppContext(settings=settings, db=db, box=box, admin_token=admin_token)
    ctx.sources = SourceCache(db, box)
    ctx.limiter = _limiter(settings)
    ctx.trusted_proxies = tuple(parse_network(p) for p in settings.trusted_proxies)
    return ctx


def _limiter(settings: Settings):  # type: ignore[no-untyped-def]
    if settings.redis_url:
        from api.ingress.redis_limits import RedisLimiter

        return RedisLimiter(settings.redis_url)
    return LocalLimiter()


async def _connect_forever(ctx: AppContext) -> None:
    delay = 0.5
    while True:
        try:
            client = await connect(ctx.settings)
            await ensure_search_attributes(client, ctx.settings.temporal_namespace)
            ctx.temporal = client
            log.info("connected to Temporal at %s", ctx.settings.temporal_target)
            if ctx.relay is not None:
                ctx.relay.nudge()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("Temporal not reachable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


class DealflowAPI(FastAPI):
    """FastAPI, with the webhook ingress served on a fast path (see ``serve_ingress``)."""

    max_body_bytes = 1024 * 1024

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if is_ingress(scope):
            await serve_ingress(self, scope, receive, send)
            return
        if scope["type"] == "http" and (refusal := nul_in(scope)) is not None:
            status, detail, errors = refusal
            await send_problem(scope, receive, send, status, detail, errors=errors)
            return
        await limit_body(super().__call__, self.max_body_bytes, scope, receive, send)


def create_app(settings: Settings, *, run_migrations: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if run_migrations:
            await asyncio.to_thread(upgrade, settings.effective_database_url)
        ctx = build_context(settings)
        app.state.ctx = ctx
        ctx.relay = Relay(
            ctx.db,
            lambda: ctx.temporal,
            task_queue=settings.task_queue,
            batch_size=settings.relay_batch_size,
            interval_s=settings.relay_interval.total_seconds(),
            max_attempts=settings.relay_max_attempts,
        )
        ctx.writer = EventWriter(ctx.db)
        ctx.writer.start()
        ctx.relay.start()
        connector = asyncio.create_task(_connect_forever(ctx), name="temporal-connect")
        try:
            yield
        finally:
            connector.cancel()
            await ctx.writer.close()
            await ctx.relay.stop()
            ctx.db.dispose()

    app = DealflowAPI(
        title="dealflow",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    use_dealflow_names()
    app.max_body_bytes = settings.max_body_bytes
    problems.install(app)
    for module in (ops, webhooks, keys, sources, events, pipelines, migrations, deals, approvals):
        app.include_router(module.router)
    app.include_router(dead_letters_router)
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    return app
