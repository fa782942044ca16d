"""When a pipeline is live, and on which version: test mode, a scheduled go-live, active.

``POST /v1/pipelines/{id}/activate`` stores what the admin asked for (``status``, ``test_mode``,
``go_live_at``, ``active_version``, ``scheduled_version``); what is in effect at an instant is
derived from those, so a go-live date takes effect at that instant without anything having to
run then (the go-live timer only records it, and may run late):

- a first go-live (``scheduled``, never live before): ``scheduled`` until ``go_live_at`` (or
  ``test`` with test mode: try it out until go-live), ``active`` with test mode off from then on;
- a new version scheduled on a live pipeline (``active`` or ``test`` with a
  ``scheduled_version``): the live version keeps its status until ``go_live_at``; from then on
  the scheduled version is the one in effect, ``active``, test mode off;
- otherwise what was stored (``draft``, ``test``, ``scheduled``, ``active``).

Pure: the caller passes ``now``. Whoever builds a deal's pipeline snapshot should take the
version and ``test_mode`` from here, so that a new deal gets the right one at any instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "LIVE_STATUSES",
    "PendingGoLive",
    "effective_activation",
    "effective_version",
    "is_live",
    "pending_go_live",
]

LIVE_STATUSES = ("active", "test")
"""The stored statuses of a pipeline whose deals run on a live version."""


@dataclass(frozen=True)
class PendingGoLive:
    """A go-live still to come: ``version`` takes effect at ``go_live_at``."""

    version: int
    go_live_at: datetime


def _reached(go_live_at: datetime | None, now: datetime) -> bool:
    return go_live_at is not None and now >= go_live_at


def effective_activation(
    status: str,
    test_mode: bool,
    go_live_at: datetime | None,
    now: datetime,
    scheduled_version: int | None = None,
) -> tuple[str, bool]:
    """The ``(status, test_mode)`` in effect at ``now``."""
    if status == "scheduled" and go_live_at is not None:
        if now >= go_live_at:
            return "active", False
        if test_mode:
            return "test", True
    if scheduled_version is not None and status in LIVE_STATUSES and _reached(go_live_at, now):
        return "active", False
    return status, test_mode


def effective_version(
    active_version: int | None,
    scheduled_version: int | None,
    go_live_at: datetime | None,
    now: datetime,
) -> int | None:
    """The version new deals get at ``now``: the scheduled one from ``go_live_at`` on, the
    active one before (``None`` if the pipeline was never activated)."""
    if scheduled_version is not None and _reached(go_live_at, now):
        return scheduled_version
    return active_version


def pending_go_live(
    status: str,
    active_version: int | None,
    scheduled_version: int | None,
    go_live_at: datetime | None,
    now: datetime,
) -> PendingGoLive | None:
    """The go-live still to come at ``now``, if any: a new version of a live pipeline, or the
    first go-live of one never live before (its ``active_version``)."""
    if go_live_at is None or now >= go_live_at:
        return None
    if scheduled_version is not None and status in LIVE_STATUSES:
        return PendingGoLive(version=scheduled_version, go_live_at=go_live_at)
    if status == "scheduled" and active_version is not None:
        return PendingGoLive(version=active_version, go_live_at=go_live_at)
    return None


def is_live(
    status: str,
    active_version: int | None,
    scheduled_version: int | None,
    go_live_at: datetime | None,
    now: datetime,
) -> bool:
    """Whether deals already run on a live version at ``now`` (``active`` or ``test``; a first
    go-live still to come, even with test mode, is not live yet)."""
    version = effective_version(active_version, scheduled_version, go_live_at, now)
    if version is None:
        return False
    effective, _ = effective_activation(status, False, go_live_at, now, scheduled_version)
    return effective in LIVE_STATUSES
