"""``/v1/api-keys``: keys with one role and a subject."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, StringConstraints

from api.auth import Admin, Ctx, forget_cached_keys
from api.problems import ProblemError
from domain.text import NoControl
from store.keys import create_key, list_keys
from store.models import ApiKey

router = APIRouter(prefix="/v1/api-keys", tags=["keys"])

Text = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), NoControl
]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text
    role: Literal["admin", "approver", "viewer"]
    subject: Text


class KeyOut(BaseModel):
    id: str
    name: str
    role: str
    subject: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None


class KeyCreated(KeyOut):
    key: str


def _out(row: ApiKey) -> KeyOut:
    return KeyOut(**row.model_dump(exclude={"key_hash"}))


@router.post("", status_code=201, response_model=KeyCreated)
def create(body: KeyCreate, ctx: Ctx, _: Admin) -> KeyCreated:
    row, key = create_key(ctx.db, name=body.name, role=body.role, subject=body.subject)
    return KeyCreated(**_out(row).model_dump(), key=key)


@router.get("", response_model=list[KeyOut])
def index(ctx: Ctx, _: Admin) -> list[KeyOut]:
    return [_out(r) for r in list_keys(ctx.db)]


@router.delete("/{key_id}", response_model=KeyOut)
def revoke(key_id: str, ctx: Ctx, _: Admin) -> KeyOut:
    with ctx.db.session() as session:
        row = session.get(ApiKey, key_id)
        if row is None:
            raise ProblemError(404, f"no API key {key_id}")
        if row.revoked_at is None:
            row.revoked_at = datetime.now(UTC)
            session.add(row)
            session.commit()
    forget_cached_keys()
    return _out(row)
