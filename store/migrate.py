"""Apply the Alembic migrations (at every start of the API and the worker).

The API and the worker start together (``make dev``, ``docker compose up``) and both upgrade the
database: one upgrade at a time, or the second one sees half of the first one's tables. A lock
serialises them: an advisory lock on PostgreSQL, a file lock beside a SQLite file. The second
process then finds the database at head and does nothing.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).parent / "migrations"
PG_LOCK_KEY = 0x6465616C666C6F77  # "dealflow": one advisory lock id for its migrations


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


@contextmanager
def migration_lock(url: str) -> Iterator[None]:
    """Held while one process upgrades the database at ``url``."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_LOCK_KEY})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
        finally:
            engine.dispose()
        return
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:":
        yield
        return
    lock = Path(f"{path}.migrate-lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class DatabaseUnreachable(RuntimeError):
    """The database could not be connected to; the message is one line naming it."""


def upgrade(url: str) -> None:
    try:
        with migration_lock(url):
            command.upgrade(alembic_config(url), "head")
    except OperationalError as exc:
        where = make_url(url).render_as_string(hide_password=True)
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise DatabaseUnreachable(f"cannot use the database {where}: {reason}") from exc
