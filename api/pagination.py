"""Cursor pagination, newest first: ``?limit=&starting_after=`` like Stripe's lists."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool
    next_cursor: str | None = None


def newest_first(
    db: Any,
    query: Any,
    key: Any,
    *,
    limit: int,
    starting_after: str | None,
    render: Callable[[Any], T],
) -> Page[T]:
    """Run ``query`` newest first by ``key`` (a time-sortable id column), one page of ``limit``
    rows after the cursor ``starting_after``."""
    if starting_after:
        query = query.where(key < starting_after)
    query = query.order_by(key.desc()).limit(limit + 1)
    with db.session() as session:
        rows = list(session.exec(query).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return Page[T](
        data=[render(r) for r in rows],
        has_more=more,
        next_cursor=getattr(rows[-1], key.key) if more else None,
    )
