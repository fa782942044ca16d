"""Sources as the ingress needs them, decrypted and parsed once, cached for a few seconds."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api.ingress.clientip import parse_network
from dealflow.crypto import SecretBox
from domain.mapping import CompiledMapping, MappingError, compile_mapping
from store.db import Database
from store.models import Source

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
TTL_SECONDS = 5.0


@dataclass(frozen=True)
class ActiveSource:
    id: str
    name: str
    scheme: str
    secrets: tuple[str, ...]
    networks: tuple[Network, ...]
    rate_per_second: float | None
    rate_burst: int | None
    tolerance_s: float | None
    mapping: dict[str, Any] | None
    compiled: CompiledMapping | None
    enabled: bool
    blocked_until: datetime | None
    previous_valid_until: datetime | None
    loaded_at: float

    def secrets_now(self, now: datetime) -> tuple[str, ...]:
        if len(self.secrets) > 1 and self.previous_valid_until and now > self.previous_valid_until:
            return self.secrets[:1]
        return self.secrets


def to_active(row: Source, box: SecretBox) -> ActiveSource:
    secrets = [box.decrypt(row.secret_enc, context=row.id)]
    if row.previous_secret_enc and row.previous_valid_until:
        if row.previous_valid_until > datetime.now(UTC):
            secrets.append(box.decrypt(row.previous_secret_enc, context=row.id))
    return ActiveSource(
        id=row.id,
        name=row.name,
        scheme=row.scheme,
        secrets=tuple(secrets),
        networks=tuple(parse_network(c) for c in row.ip_allowlist),
        rate_per_second=row.rate_per_second,
        rate_burst=row.rate_burst,
        tolerance_s=row.tolerance_seconds,
        mapping=row.mapping,
        compiled=_compile(row.mapping),
        enabled=row.enabled,
        blocked_until=row.blocked_until,
        previous_valid_until=row.previous_valid_until,
        loaded_at=time.monotonic(),
    )


def _compile(mapping: dict[str, Any] | None) -> CompiledMapping | None:
    if mapping is None:
        return None
    try:
        return compile_mapping(mapping)
    except MappingError:
        return None  # validated when saved; a broken stored mapping maps nothing


class SourceCache:
    def __init__(self, db: Database, box: SecretBox, ttl: float = TTL_SECONDS) -> None:
        self.db = db
        self.box = box
        self.ttl = ttl
        self._items: dict[str, ActiveSource] = {}

    def cached(self, source_id: str) -> ActiveSource | None:
        """The source if it was loaded less than ``ttl`` seconds ago (no I/O)."""
        item = self._items.get(source_id)
        if item is not None and time.monotonic() - item.loaded_at < self.ttl:
            return item
        return None

    async def lookup(self, source_id: str) -> ActiveSource | None:
        """The source, from the cache or (in a thread, off the event loop) from the database.
        Raises when the database cannot be read."""
        item = self.cached(source_id)
        if item is not None:
            return item
        return await asyncio.to_thread(self.get, source_id)

    def get(self, source_id: str) -> ActiveSource | None:
        item = self.cached(source_id)
        if item is not None:
            return item
        with self.db.session() as session:
            row = session.get(Source, source_id)
        loaded = to_active(row, self.box) if row is not None else None
        if len(self._items) > 10_000:
            self._items.clear()
        if loaded is not None:
            self._items[source_id] = loaded
        return loaded

    def forget(self, source_id: str) -> None:
        self._items.pop(source_id, None)
