"""Fixtures for deal workflow tests: a task queue per test (for ``run_worker`` of
tests/conftest.py), search attribute upserts on or off."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from workflows.search import Upserts


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a long workflow test (20,000 events)")


@pytest.fixture
def task_queue() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def no_upserts() -> Iterator[None]:
    """The time-skipping server cannot register custom search attributes."""
    before = Upserts.enabled
    Upserts.enabled = False
    yield
    Upserts.enabled = before


@pytest.fixture
def with_upserts() -> Iterator[None]:
    before = Upserts.enabled
    Upserts.enabled = True
    yield
    Upserts.enabled = before
