"""Deal links: ids other systems know a deal by, for events that name their deal by
``deal_ref`` (``{"by": "stripe_customer", "id": "cus_…"}``) instead of ``deal_id``.

A ``deal.created`` or ``deal.updated`` event declares them in ``external_ids``; the ingress
writes them in the transaction that stores that event, so an event sent after its 202 always
finds them. The relay resolves the references of the events it claims (the enrichment step)
before it hands them to their deal workflows.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, or_, select

from store.models import DealLink
from store.upsert import upsert

LINKS = DealLink.__table__  # type: ignore[attr-defined]
Ref = tuple[str, str]
"""(namespace, external id)"""


def declared(
    event_id: str, deal_id: str | None, payload: dict[str, Any], received_at: datetime
) -> list[dict[str, Any]]:
    """The link rows an accepted event declares (none without a ``deal_id``)."""
    external = payload.get("external_ids")
    if not deal_id or not isinstance(external, dict):
        return []
    return [
        {
            "namespace": namespace,
            "external_id": external_id,
            "deal_id": deal_id,
            "event_id": event_id,
            "linked_at": received_at,
        }
        for namespace, external_id in external.items()
    ]


def write(conn: Any, rows: list[dict[str, Any]]) -> None:
    """Insert or take over each link; an older declaration never takes one back (two events
    committed out of order, or a duplicate delivery, leave the newest deal linked)."""
    if not rows:
        return
    newest: dict[Ref, dict[str, Any]] = {}
    for row in rows:  # one statement may not touch a key twice (PostgreSQL)
        key = (row["namespace"], row["external_id"])
        if key not in newest or newest[key]["linked_at"] <= row["linked_at"]:
            newest[key] = row
    # A deal has one id per namespace: declaring another one releases the deal's older id
    # there (unless that one was declared later still).
    c = LINKS.c
    fresh: list[dict[str, Any]] = []
    for row in newest.values():
        others = (
            c.deal_id == row["deal_id"],
            c.namespace == row["namespace"],
            c.external_id != row["external_id"],
        )
        if conn.execute(
            select(c.external_id).where(*others, c.linked_at > row["linked_at"])
        ).first():
            continue  # the deal declared another id there later
        conn.execute(delete(LINKS).where(*others))
        fresh.append(row)
    if fresh:
        upsert(conn, DealLink, fresh, ["namespace", "external_id"], newer_than="linked_at")


def resolve(conn: Any, refs: Iterable[Ref]) -> dict[Ref, str]:
    """The deal each reference names, for those that name one."""
    wanted = sorted(set(refs))
    found: dict[Ref, str] = {}
    c = LINKS.c
    for start in range(0, len(wanted), 200):
        chunk = wanted[start : start + 200]
        matches = or_(*(and_(c.namespace == ns, c.external_id == ext) for ns, ext in chunk))
        for ns, ext, deal_id in conn.execute(
            select(c.namespace, c.external_id, c.deal_id).where(matches)
        ):
            found[(ns, ext)] = deal_id
    return found


def of_deal(conn: Any, deal_id: str) -> dict[str, str]:
    """``{namespace: external id}`` of the ids linked to a deal."""
    return of_deals(conn, [deal_id]).get(deal_id, {})


def of_deals(conn: Any, deal_ids: list[str]) -> dict[str, dict[str, str]]:
    """The ids linked to each of these deals (one query)."""
    if not deal_ids:
        return {}
    c = LINKS.c
    rows = conn.execute(
        select(c.deal_id, c.namespace, c.external_id)
        .where(c.deal_id.in_(deal_ids))
        .order_by(c.namespace)
    )
    linked: dict[str, dict[str, str]] = {}
    for deal_id, ns, ext in rows:
        linked.setdefault(deal_id, {})[ns] = ext
    return linked


def ref_of(payload: dict[str, Any]) -> Ref | None:
    ref = payload.get("deal_ref")
    if isinstance(ref, dict) and isinstance(ref.get("by"), str) and isinstance(ref.get("id"), str):
        return ref["by"], ref["id"]
    return None
