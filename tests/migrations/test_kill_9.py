"""A migration survives ``kill -9`` of its worker half-way and moves every deal exactly once.

The same scenario as ``bench/migration.py`` (which runs it with 5,000 deals), with fewer deals:
real worker and API processes on the Temporal dev server; pinned to SQLite (the read model's
two backends are covered by the other migration tests).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from bench.migration import scenario


@pytest.mark.e2e
async def test_kill_9_of_the_worker_half_way(
    dev_env: WorkflowEnvironment, sqlite_database: str, tmp_path: Path
) -> None:
    out = io.StringIO()
    figures = await scenario(
        dev_env.client,
        sqlite_database,
        deals=200,
        batch_size=20,
        rate=200,
        workdir=tmp_path,
        out=out,
    )
    assert "kill -9 of the worker" in out.getvalue()
    assert figures["before_kill"] < 200  # the worker really died before the end
    assert (figures["migrated"], figures["not_exactly_once"], figures["wrong_place"]) == (200, 0, 0)
