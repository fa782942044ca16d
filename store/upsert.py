"""Insert-or-ignore and insert-or-update that work on SQLite and PostgreSQL alike."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session


def _insert(target: Session | Connection, table: Any) -> Any:
    bind = target.get_bind() if isinstance(target, Session) else target
    return (postgresql if bind.dialect.name == "postgresql" else sqlite).insert(table)


def insert_ignore(session: Session, model: Any, rows: list[dict[str, Any]], keys: list[str]) -> int:
    """Insert the rows whose ``keys`` are new; returns how many were inserted (counted with
    ``RETURNING``: psycopg's rowcount of such an insert is -1)."""
    if not rows:
        return 0
    table = model.__table__
    stmt = (
        _insert(session, table)
        .values(rows)
        .on_conflict_do_nothing(index_elements=keys)
        .returning(*[table.c[k] for k in keys])
    )
    return len(session.execute(stmt).all())


def upsert(
    session: Session | Connection,
    model: Any,
    row: dict[str, Any] | list[dict[str, Any]],
    keys: list[str],
    *,
    newer_than: str | None = None,
) -> None:
    """Insert ``row`` (or rows with the same columns, keys all different), or update the
    existing one; with ``newer_than`` only if that column grows."""
    table = model.__table__
    stmt = _insert(session, table).values(row)
    columns = row[0] if isinstance(row, list) else row
    update = {k: stmt.excluded[k] for k in columns if k not in keys}
    where = None
    if newer_than is not None:
        where = table.c[newer_than] < stmt.excluded[newer_than]
    session.execute(stmt.on_conflict_do_update(index_elements=keys, set_=update, where=where))
