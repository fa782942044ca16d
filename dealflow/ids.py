"""Time-sortable, URL-safe identifiers with a type prefix (``evt_0190…``), like ULIDs."""

from __future__ import annotations

import os
import time


def new_id(prefix: str) -> str:
    """``prefix_`` + 12 hex digits of millisecond time + 20 hex digits of randomness.

    Hex keeps ids sortable by creation time as plain strings (and is cheap: this runs once per
    accepted webhook)."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"
