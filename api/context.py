"""What every request handler shares: settings, the database, the Temporal client, the box."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request
from temporalio.client import Client

from dealflow.crypto import SecretBox
from dealflow.settings import Settings
from store.db import Database

if TYPE_CHECKING:
    from api.ingress.clientip import Network
    from api.ingress.limits import Limiter
    from api.ingress.writer import EventWriter
    from api.relay import Relay
    from api.sources_cache import SourceCache


@dataclass
class AppContext:
    settings: Settings
    db: Database
    box: SecretBox
    admin_token: str
    temporal: Client | None = None
    relay: Relay | None = None
    sources: SourceCache | None = None
    limiter: Limiter | None = None
    writer: EventWriter = None  # type: ignore[assignment]
    trusted_proxies: tuple[Network, ...] = ()
    background: list[asyncio.Task[None]] = field(default_factory=list)

    def client(self) -> Client:
        if self.temporal is None:
            from api.problems import ProblemError

            raise ProblemError(
                503, "Temporal is not reachable yet; try again", headers={"Retry-After": "2"}
            )
        return self.temporal


def get_context(request: Request) -> AppContext:
    return request.app.state.ctx  # type: ignore[no-any-return]
