"""When a pipeline is live: test mode, a scheduled go-live, active.

``POST /v1/pipelines/{id}/activate`` stores what the admin asked for (``status``, ``test_mode``,
``go_live_at``); the status in effect at an instant is derived from those, so a go-live date takes
effect at that instant without anything having to run then:

- ``scheduled`` with ``go_live_at`` reached: ``active``, test mode off;
- ``scheduled`` with test mode, before ``go_live_at``: ``test`` (try it out until go-live);
- otherwise what was stored (``draft``, ``test``, ``scheduled``, ``active``).

Pure: the caller passes ``now``. Whoever builds a deal's pipeline snapshot should take
``test_mode`` from here too, so that effects start running at go-live.
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["effective_activation"]


def effective_activation(
    status: str, test_mode: bool, go_live_at: datetime | None, now: datetime
) -> tuple[str, bool]:
    """The ``(status, test_mode)`` in effect at ``now``."""
    if status == "scheduled" and go_live_at is not None:
        if now >= go_live_at:
            return "active", False
        if test_mode:
            return "test", True
    return status, test_mode
