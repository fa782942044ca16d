"""Creating and listing API keys (used by the API and by ``dealflow keys``)."""

from __future__ import annotations

from sqlmodel import select

from dealflow.crypto import hash_api_key, new_api_key
from dealflow.ids import new_id
from store.db import Database
from store.models import ApiKey


def create_key(db: Database, *, name: str, role: str, subject: str) -> tuple[ApiKey, str]:
    """Return the stored row and the key itself (shown once; only its hash is kept)."""
    key = new_api_key()
    row = ApiKey(
        id=new_id("key"),
        name=name,
        role=role,
        subject=subject,
        key_hash=hash_api_key(key),
        prefix=key[:8],
    )
    with db.session() as session:
        session.add(row)
        session.commit()
    return row, key


def list_keys(db: Database) -> list[ApiKey]:
    with db.session() as session:
        return list(session.exec(select(ApiKey).order_by(ApiKey.created_at)).all())  # type: ignore[arg-type]
