"""Token buckets per source and globally, and the authentication-failure breaker.

In-process by default; ``RedisLimiter`` shares the buckets between API processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


@dataclass
class Decision:
    allowed: bool
    retry_after: float = 0.0


class Limiter(Protocol):
    def take(self, key: str, rate: float, burst: int) -> Decision: ...

    def auth_failure(self, key: str, limit: int, window_s: float) -> bool:
        """Count a failure; True when the key passed ``limit`` failures in the window."""
        ...


class LocalLimiter:
    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._failures: dict[str, list[float]] = {}

    def take(self, key: str, rate: float, burst: int) -> Decision:
        now = time.monotonic()
        tokens, stamp = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - stamp) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return Decision(True)
        self._buckets[key] = (tokens, now)
        return Decision(False, retry_after=(1.0 - tokens) / rate)

    def auth_failure(self, key: str, limit: int, window_s: float) -> bool:
        now = time.monotonic()
        recent = [t for t in self._failures.get(key, []) if now - t < window_s]
        recent.append(now)
        self._failures[key] = recent
        return len(recent) >= limit
