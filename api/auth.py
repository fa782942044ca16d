"""Bearer API keys: each has one role (admin, approver, viewer) and a subject (who it is)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request
from sqlmodel import select

from api.context import AppContext, get_context
from api.problems import ProblemError
from dealflow.crypto import constant_time_equals, hash_api_key
from store.models import ApiKey

Role = Literal["admin", "approver", "viewer"]
RANK = {"viewer": 0, "approver": 1, "admin": 2}
BOOTSTRAP_SUBJECT = "bootstrap-admin"
_CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: Role
    subject: str

    def can(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]


_cache: dict[str, tuple[float, Principal | None]] = {}


def _lookup(ctx: AppContext, token: str) -> Principal | None:
    if constant_time_equals(token, ctx.admin_token):
        return Principal(key_id="bootstrap", role="admin", subject=BOOTSTRAP_SUBJECT)
    digest = hash_api_key(token)
    hit = _cache.get(digest)
    now = time.monotonic()
    if hit is not None and hit[0] > now:
        return hit[1]
    with ctx.db.session() as session:
        row = session.exec(select(ApiKey).where(ApiKey.key_hash == digest)).first()
    principal = None
    if row is not None and row.revoked_at is None:
        principal = Principal(key_id=row.id, role=row.role, subject=row.subject)  # type: ignore[arg-type]
    if len(_cache) > 10_000:
        _cache.clear()
    _cache[digest] = (now + _CACHE_SECONDS, principal)
    return principal


def forget_cached_keys() -> None:
    _cache.clear()


def authenticate(request: Request, ctx: Annotated[AppContext, Depends(get_context)]) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProblemError(
            401,
            "this endpoint needs an API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": 'Bearer realm="dealflow"'},
        )
    principal = _lookup(ctx, token.strip())
    if principal is None:
        raise ProblemError(
            401,
            "the API key is not valid (unknown or revoked)",
            headers={"WWW-Authenticate": 'Bearer realm="dealflow", error="invalid_token"'},
        )
    return principal


def require(role: Role):  # type: ignore[no-untyped-def]
    def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.can(role):
            raise ProblemError(
                403,
                f"this needs the '{role}' role; the key of '{principal.subject}' has "
                f"'{principal.role}'",
            )
        return principal

    return dependency


Viewer = Annotated[Principal, Depends(require("viewer"))]
Approver = Annotated[Principal, Depends(require("approver"))]
Admin = Annotated[Principal, Depends(require("admin"))]
Ctx = Annotated[AppContext, Depends(get_context)]
