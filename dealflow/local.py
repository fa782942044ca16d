"""Secrets a local installation keeps under the data folder when they are not set."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def ensure_secret(data_dir: Path, name: str, *, prefix: str = "") -> str:
    """Read ``data_dir/name``, or create it (mode 0600) with a new random value."""
    path = data_dir / name
    if path.exists():
        value = path.read_text().strip()
        if value:
            return value
    data_dir.mkdir(parents=True, exist_ok=True)
    value = prefix + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value
