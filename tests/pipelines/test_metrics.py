"""``GET /v1/pipelines/{id}/metrics`` on read-model rows written straight into the database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from store.models import Deal, DealHistory
from tests.pipelines.conftest import Api
from tests.pipelines.test_pipelines_api import body

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)


def insert(api: Api, pipeline_id: str, deals: dict[str, dict[str, Any]]) -> None:
    with api.db.session() as session:
        for deal_id, spec in deals.items():
            path = spec["path"]
            session.add(
                Deal(
                    deal_id=deal_id,
                    pipeline_id=pipeline_id,
                    pipeline_version=1,
                    stage=spec["stage"],
                    stage_entered_at=T0 + path[-1][1],
                    status=spec["status"],
                    is_rotting=spec.get("rotting", False),
                )
            )
            seq = 0
            previous = None
            events = [(offset, stage) for stage, offset in path]
            events += [(offset, f"!{kind}") for kind, offset in spec.get("extra", [])]
            for offset, what in sorted(events, key=lambda e: e[0]):
                seq += 1
                if what.startswith("!"):
                    kind, data = what[1:], {"stage": previous}
                elif previous is None:
                    kind, data = "deal_created", {"stage": what, "value": 0, "owner": None}
                else:
                    kind, data = "stage_changed", {"from": previous, "to": what, "by": "x"}
                if not what.startswith("!"):
                    previous = what
                session.add(
                    DealHistory(deal_id=deal_id, seq=seq, at=T0 + offset, kind=kind, data=data)
                )
        session.commit()


def test_metrics_from_the_read_model(papi: Api):
    pid = papi.create(body())["id"]  # lead (SLA 8 h), qualified, proposal, won, lost
    other = papi.create(body())["id"]
    p = uuid.uuid4().hex[:8]
    insert(
        papi,
        pid,
        {
            f"{p}-1": {
                "stage": "won",
                "status": "won",
                "path": [
                    ("lead", 0 * H),
                    ("qualified", 2 * H),
                    ("proposal", D + 2 * H),
                    ("won", 3 * D + 2 * H),
                ],
            },
            f"{p}-2": {
                "stage": "lost",
                "status": "lost",
                "path": [("lead", 0 * H), ("qualified", 10 * H), ("lost", 2 * D + 10 * H)],
                "extra": [("sla_breached", 8 * H), ("activity", 9 * H)],
            },
            f"{p}-3": {
                "stage": "lead",
                "status": "open",
                "rotting": True,
                "path": [("lead", 0 * H)],
            },
            f"{p}-4": {
                "stage": "proposal",
                "status": "open",
                "path": [("qualified", 0 * H), ("proposal", 4 * D)],
            },
            f"{p}-5": {
                "stage": "qualified",
                "status": "open",
                "rotting": True,
                "path": [
                    ("lead", 0 * H),
                    ("qualified", 4 * H),
                    ("lead", 5 * H),
                    ("qualified", 6 * H),
                ],
            },
        },
    )
    insert(papi, other, {f"{p}-x": {"stage": "won", "status": "won", "path": [("won", 0 * H)]}})

    resp = papi.call("GET", f"/v1/pipelines/{pid}/metrics", as_="viewer")
    assert resp.status_code == 200, resp.text
    m = resp.json()
    assert m["deals"] == {"total": 5, "open": 3, "won": 1, "lost": 1}
    assert m["win_rate"] == 0.5
    assert m["rotting"] == 2
    assert m["sla_compliance"] == {"met": 3, "breached": 1, "in_progress": 1, "rate": 0.75}
    stages = {s["key"]: s for s in m["stages"]}
    assert list(stages) == ["lead", "qualified", "proposal", "won", "lost"]
    assert {k: s["open_deals"] for k, s in stages.items()} == {
        "lead": 1,
        "qualified": 1,
        "proposal": 1,
        "won": 0,
        "lost": 0,
    }
    assert {k: s["rotting"] for k, s in stages.items()} == {
        "lead": 1,
        "qualified": 1,
        "proposal": 0,
        "won": 0,
        "lost": 0,
    }
    assert {k: (s["entered"], s["converted"], s["conversion_rate"]) for k, s in stages.items()} == {
        "lead": (4, 3, 0.75),
        "qualified": (4, 2, 0.5),
        "proposal": (2, 1, 0.5),
        "won": (1, None, None),
        "lost": (1, None, None),
    }
    # lead: 2 h, 10 h, 4 h and 1 h; qualified: 24 h, 48 h, 96 h and 1 h; proposal: 48 h.
    assert stages["lead"]["avg_time_in_stage_seconds"] == 4.25 * 3600
    assert stages["lead"]["avg_time_in_stage"] == "PT4H15M"
    assert stages["qualified"]["avg_time_in_stage_seconds"] == 42.25 * 3600
    assert stages["proposal"]["avg_time_in_stage"] == "P2D"
    assert stages["won"]["avg_time_in_stage"] is None
    assert stages["lead"]["sla"] == {"met": 3, "breached": 1, "in_progress": 1, "compliance": 0.75}
    assert stages["qualified"]["sla"] is None

    empty = papi.call(
        "GET", f"/v1/pipelines/{papi.create(body())['id']}/metrics", as_="viewer"
    ).json()
    assert empty["win_rate"] is None and empty["deals"]["total"] == 0
    assert empty["sla_compliance"]["rate"] is None
    assert papi.call("GET", "/v1/pipelines/pl_none/metrics", as_="viewer").status_code == 404
