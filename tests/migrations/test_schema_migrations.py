"""The Alembic migrations, on SQLite and PostgreSQL: head matches the models (nothing for
autogenerate to add), and the newest revisions downgrade and upgrade again cleanly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlmodel import SQLModel

import store.models  # noqa: F401  (registers the tables)
from store.db import make_engine
from store.migrate import alembic_config, upgrade
from tests.conftest import BACKENDS, fresh_pg_database


@pytest.fixture(params=BACKENDS)
def migrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'schema.db'}"
        upgrade(url)
        yield url
    else:
        with fresh_pg_database() as url:  # migrated to head
            yield url


def drift(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), SQLModel.metadata))
    finally:
        engine.dispose()


def schema(url: str) -> tuple[set[str], set[str]]:
    """The tables, and the indexes of ``events``."""
    engine = make_engine(url)
    try:
        found = inspect(engine)
        return set(found.get_table_names()), {i["name"] for i in found.get_indexes("events")}
    finally:
        engine.dispose()


def pipeline_columns(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns("pipelines")}
    finally:
        engine.dispose()


def test_one_head_and_it_matches_the_models(migrated_url: str) -> None:
    assert ScriptDirectory.from_config(alembic_config(migrated_url)).get_heads() == ["0007"]
    assert drift(migrated_url) == []


def test_the_alert_outbox_downgrades_and_upgrades_again(migrated_url: str) -> None:
    tables, indexes = schema(migrated_url)
    assert "alerts" in tables and "ix_events_processed_at" in indexes
    command.downgrade(alembic_config(migrated_url), "0003")
    tables, indexes = schema(migrated_url)
    assert "alerts" not in tables and "ix_events_processed_at" not in indexes
    assert "events" in tables and "deal_migrations" in tables
    upgrade(migrated_url)
    assert drift(migrated_url) == []


def test_the_scheduled_version_downgrades_and_upgrades_again(migrated_url: str) -> None:
    assert "scheduled_version" in pipeline_columns(migrated_url)
    command.downgrade(alembic_config(migrated_url), "0004")
    columns = pipeline_columns(migrated_url)
    assert "scheduled_version" not in columns
    assert {"active_version", "go_live_at", "status"} <= columns
    upgrade(migrated_url)
    assert "scheduled_version" in pipeline_columns(migrated_url)
    assert drift(migrated_url) == []
