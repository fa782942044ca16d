"""Pipelines over real HTTP on SQLite and PostgreSQL: validation, templates, versions, reorder,
activation, simulation and audit."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import select

from store.models import AuditEntry, Pipeline
from tests.pipelines.conftest import Api

T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)


def stages() -> list[dict[str, Any]]:
    return [
        {
            "key": "lead",
            "name": "Lead",
            "probability": 10,
            "sla": {"target": "PT8H", "warn_at": 0.5},
        },
        {"key": "qualified", "name": "Qualified", "probability": 30, "rotting": "P14D"},
        {
            "key": "proposal",
            "name": "Proposal",
            "probability": 60,
            "required_fields": ["budget"],
            "validation": [{"expr": "value > `0`", "message": "a proposal needs a value"}],
            "approval": {"approvers": ["alice"]},
        },
        {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
        {"key": "lost", "name": "Lost", "probability": 0, "outcome": "lost"},
    ]


def body(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": f"Pipeline {uuid.uuid4().hex[:6]}",
        "type": "sales",
        "currency": "EUR",
        "probability_mode": "stage",
        "stages": stages(),
    }
    data.update(changes)
    return data


def errors(resp) -> list[tuple[tuple, str]]:  # type: ignore[no-untyped-def]
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    return [(tuple(e["loc"]), e["code"]) for e in resp.json()["errors"]]


# --------------------------------------------------------------------------- validation


def test_one_422_lists_duplicate_names_an_automation_cycle_and_an_unknown_stage(papi: Api):
    data = body(
        stages=[
            {"key": "lead", "name": "Lead", "probability": 10},
            {"key": "qualified", "name": " lead ", "probability": 150},
            {"key": "proposal", "name": "Proposal", "probability": 50},
        ],
        automations=[
            {
                "name": "on",
                "trigger": {"on": "stage_entered", "stage": "qualified"},
                "actions": [{"do": "move_to_stage", "stage": "proposal"}],
            },
            {
                "name": "back",
                "trigger": {"on": "stage_entered", "stage": "proposal"},
                "actions": [{"do": "move_to_stage", "stage": "qualified"}],
            },
            {
                "name": "typo",
                "trigger": {"on": "stage_entered", "stage": "lead"},
                "actions": [{"do": "move_to_stage", "stage": "qualifed"}],
            },
        ],
    )
    resp = papi.call("POST", "/v1/pipelines", json=data)
    found = errors(resp)
    assert (("body", "stages", 1, "probability"), "invalid") in found
    assert (("body", "stages", 1, "name"), "duplicate_stage_name") in found
    assert (("body", "automations", 2, "actions", 0, "stage"), "unknown_stage") in found
    cycles = [e for e in resp.json()["errors"] if e["code"] == "automation_cycle"]
    assert cycles and "qualified → proposal → qualified" in cycles[0]["msg"]
    assert "did you mean 'qualified'" in str(resp.json()["errors"])


def test_writes_need_admin_reads_need_a_key(papi: Api):
    assert papi.http.get("/v1/pipeline-templates").status_code == 401
    resp = papi.call("POST", "/v1/pipelines", as_="viewer", json=body())
    assert resp.status_code == 403
    created = papi.create(body())
    pid = created["id"]
    for method, path, kw in [
        ("PUT", f"/v1/pipelines/{pid}", {"json": body()}),
        ("POST", f"/v1/pipelines/{pid}/stages:reorder", {"json": {"order": []}}),
        ("POST", f"/v1/pipelines/{pid}/activate", {"json": {}}),
    ]:
        assert papi.call(method, path, as_="approver", **kw).status_code == 403
    for path in ("versions", "versions/1", "diff?from=1", "audit", "metrics"):
        assert papi.call("GET", f"/v1/pipelines/{pid}/{path}", as_="viewer").status_code == 200
    assert papi.call("GET", "/v1/pipelines/pl_nope/versions", as_="viewer").status_code == 404


# --------------------------------------------------------------------------- templates


def test_templates_are_listed_and_fill_an_empty_pipeline(papi: Api):
    listed = papi.call("GET", "/v1/pipeline-templates", as_="viewer").json()["data"]
    assert [t["key"] for t in listed] == ["sales", "support"]
    created = papi.create({"name": "New product", "currency": "BRL", "template": "support"})
    assert created["type"] == "support"
    assert created["currency"] == "BRL" and created["name"] == "New product"
    assert [s["key"] for s in created["stages"]] == [s["key"] for s in listed[1]["stages"]]
    assert created["automations"] and created["rules"]["skip"] == "allow"
    own = papi.create(body(template="sales"))
    assert [s["key"] for s in own["stages"]] == [s["key"] for s in stages()]


def test_an_unknown_template_is_reported_with_the_other_problems(papi: Api):
    resp = papi.call(
        "POST", "/v1/pipelines", json={"name": "x", "template": "marketing", "currency": "eur"}
    )
    found = errors(resp)
    assert (("body", "template"), "unknown_pipeline_template") in found
    assert (("body", "currency"), "invalid") in found
    assert "'sales'" in resp.json()["detail"] or "'sales'" in str(resp.json()["errors"])


# --------------------------------------------------------------------------- versions, diff, audit


def test_versions_diff_and_audit_say_who_changed_what_when(papi: Api):
    created = papi.create(body())
    pid = created["id"]
    changed = body(name=created["name"])
    changed["stages"][1]["rotting"] = "P7D"
    changed["stages"][2]["approval"]["approvers"] = ["alice", "bob"]
    changed["stages"].insert(2, {"key": "demo", "name": "Demo", "probability": 45})
    del changed["stages"][0]["sla"]
    changed["automations"] = [
        {
            "name": "Demo task",
            "trigger": {"on": "stage_entered", "stage": "demo"},
            "actions": [{"do": "create_task", "template": "Prepare the demo"}],
        }
    ]
    changed["rules"] = {"skip": ["carol"], "backward": "allow"}
    resp = papi.call("PUT", f"/v1/pipelines/{pid}", json=changed)
    assert resp.status_code == 200, resp.text
    assert resp.json()["version"] == 2

    versions = papi.call("GET", f"/v1/pipelines/{pid}/versions", as_="viewer").json()["data"]
    assert [(v["version"], v["created_by"]) for v in versions] == [
        (1, "bootstrap-admin"),
        (2, "bootstrap-admin"),
    ]
    assert all(datetime.fromisoformat(v["created_at"]) for v in versions)
    assert versions[1]["current"] and not versions[0]["current"]
    assert "1 stage added" in versions[1]["summary"]

    old = papi.call("GET", f"/v1/pipelines/{pid}/versions/1", as_="viewer").json()
    assert old["version"] == 1 and len(old["stages"]) == 5
    assert papi.call("GET", f"/v1/pipelines/{pid}/versions/9", as_="viewer").status_code == 404

    diff = papi.call("GET", f"/v1/pipelines/{pid}/diff?from=1&to=2", as_="viewer").json()
    assert diff["from"] == 1 and diff["to"] == 2 and diff["changed"] is True
    assert [a["key"] for a in diff["stages"]["added"]] == ["demo"]
    assert diff["stages"]["removed"] == []
    by_stage = {c["key"]: c["changes"] for c in diff["stages"]["changed"]}
    assert by_stage["qualified"] == [{"field": "rotting", "before": "P14D", "after": "P7D"}]
    assert {
        "field": "approval.approvers",
        "before": ["alice"],
        "after": ["alice", "bob"],
    } in by_stage["proposal"]
    assert {
        "field": "sla",
        "before": {"target": "PT8H", "warn_at": 0.5},
        "after": None,
    } in by_stage["lead"]
    assert diff["rules"] == [{"field": "skip", "before": "deny", "after": ["carol"]}]
    assert [a["name"] for a in diff["automations"]["added"]] == ["Demo task"]
    assert diff["stages"]["order"] is None  # the old stages kept their relative order

    same = papi.call("GET", f"/v1/pipelines/{pid}/diff?from=2&to=2", as_="viewer").json()
    assert same["changed"] is False

    with papi.db.session() as session:
        rows = session.exec(select(AuditEntry).where(AuditEntry.target == pid)).all()
    assert [(r.action, r.actor, r.data.get("version")) for r in rows] == [
        ("pipeline.created", "bootstrap-admin", 1),
        ("pipeline.updated", "bootstrap-admin", 2),
    ]
    assert "1 stage added" in rows[1].data["summary"]
    audit = papi.call("GET", f"/v1/pipelines/{pid}/audit", as_="viewer").json()["data"]
    assert [a["action"] for a in audit] == ["pipeline.created", "pipeline.updated"]


# --------------------------------------------------------------------------- reorder


def test_reorder_makes_a_new_version_in_that_order(papi: Api):
    pid = papi.create(body())["id"]
    order = ["qualified", "lead", "proposal", "lost", "won"]
    resp = papi.call("POST", f"/v1/pipelines/{pid}/stages:reorder", json={"order": order})
    assert resp.status_code == 200, resp.text
    assert resp.json()["version"] == 2
    assert [s["key"] for s in resp.json()["stages"]] == order
    first = papi.call("GET", f"/v1/pipelines/{pid}/versions/1", as_="viewer").json()
    assert [s["key"] for s in first["stages"]] == ["lead", "qualified", "proposal", "won", "lost"]
    diff = papi.call("GET", f"/v1/pipelines/{pid}/diff?from=1&to=2", as_="viewer").json()
    assert diff["stages"]["order"]["after"] == order
    assert diff["stages"]["added"] == diff["stages"]["removed"] == diff["stages"]["changed"] == []


def test_reorder_must_be_a_permutation_and_keep_outcomes_last(papi: Api):
    pid = papi.create(body())["id"]
    resp = papi.call(
        "POST",
        f"/v1/pipelines/{pid}/stages:reorder",
        json={"order": ["lead", "lead", "qualifed", "proposal", "won"]},
    )
    found = errors(resp)
    assert (("body", "order", 1), "duplicate_stage_key") in found
    assert (("body", "order", 2), "unknown_stage") in found
    missing = [e["msg"] for e in resp.json()["errors"] if e["code"] == "missing_stage"]
    assert len(missing) == 2 and any("'qualified'" in m for m in missing)
    assert any("'lost'" in m for m in missing)

    resp = papi.call(
        "POST",
        f"/v1/pipelines/{pid}/stages:reorder",
        json={"order": ["lead", "won", "qualified", "proposal", "lost"]},
    )
    assert errors(resp) == [(("body", "order", 1, "outcome"), "misplaced_outcome_stage")]
    assert papi.call("GET", f"/v1/pipelines/{pid}", as_="viewer").json()["current_version"] == 1
    resp = papi.call("POST", "/v1/pipelines/pl_missing/stages:reorder", json={"order": []})
    assert resp.status_code == 404


# --------------------------------------------------------------------------- activation


def test_test_mode_is_visible_and_switchable_and_go_live_is_scheduled(papi: Api):
    pid = papi.create(body())["id"]
    shown = papi.call("GET", f"/v1/pipelines/{pid}", as_="viewer").json()
    assert shown["status"] == "draft" and shown["test_mode"] is False

    resp = papi.call("POST", f"/v1/pipelines/{pid}/activate", json={"test_mode": True})
    assert (resp.json()["status"], resp.json()["test_mode"]) == ("test", True)
    resp = papi.call("POST", f"/v1/pipelines/{pid}/activate", json={"test_mode": False})
    assert (resp.json()["status"], resp.json()["test_mode"]) == ("active", False)

    future = datetime.now(UTC) + timedelta(days=30)
    # Live on the current version: a future go-live would take it off the air (a 409).
    resp = papi.call(
        "POST",
        f"/v1/pipelines/{pid}/activate",
        json={"go_live_at": future.isoformat(), "test_mode": True},
    )
    assert resp.status_code == 409, resp.text
    assert resp.json()["errors"][0]["code"] == "already_live"

    # A pipeline never live: test mode until its go-live, which can be moved.
    pid = papi.create(body())["id"]
    resp = papi.call(
        "POST",
        f"/v1/pipelines/{pid}/activate",
        json={"go_live_at": future.isoformat(), "test_mode": True},
    )
    assert (resp.json()["status"], resp.json()["test_mode"]) == ("test", True)
    assert datetime.fromisoformat(resp.json()["go_live_at"]) == future
    assert resp.json()["scheduled"]["version"] == 1
    resp = papi.call(
        "POST", f"/v1/pipelines/{pid}/activate", json={"go_live_at": future.isoformat()}
    )
    assert resp.json()["status"] == "scheduled" and resp.json()["active_version"] == 1

    # The go-live instant passes (moved into the past in the database): active from then on.
    with papi.db.session() as session:
        row = session.get(Pipeline, pid)
        assert row is not None and row.status == "scheduled"
        row.go_live_at = datetime.now(UTC) - timedelta(seconds=1)
        row.test_mode = True
        session.add(row)
        session.commit()
    shown = papi.call("GET", f"/v1/pipelines/{pid}", as_="viewer").json()
    assert (shown["status"], shown["test_mode"]) == ("active", False)
    assert shown["scheduled"] is None

    with papi.db.session() as session:
        rows = session.exec(
            select(AuditEntry).where(
                AuditEntry.target == pid, AuditEntry.action == "pipeline.activated"
            )
        ).all()
    assert [(r.data["status"], r.data["test_mode"]) for r in rows] == [
        ("test", True),
        ("scheduled", False),
    ]
    resp = papi.call(
        "POST", f"/v1/pipelines/{pid}/activate", json={"go_live_at": "2025-01-01T00:00:00"}
    )
    assert resp.status_code == 422


def _live_on_v1_with_v2_saved(papi: Api, *, test_mode: bool = False) -> str:
    pid = papi.create(body())["id"]
    resp = papi.call("POST", f"/v1/pipelines/{pid}/activate", json={"test_mode": test_mode})
    assert resp.status_code == 200, resp.text
    changed = body()
    changed["stages"].insert(2, {"key": "demo", "name": "Demo", "probability": 45})
    resp = papi.call("PUT", f"/v1/pipelines/{pid}", json=changed)
    assert resp.status_code == 200 and resp.json()["version"] == 2, resp.text
    return pid


def _move_go_live_into_the_past(papi: Api, pid: str) -> None:
    """The go-live instant passes without the timer (Temporal is down for this server)."""
    with papi.db.session() as session:
        row = session.get(Pipeline, pid)
        assert row is not None
        row.go_live_at = datetime.now(UTC) - timedelta(seconds=1)
        session.add(row)
        session.commit()


def _default_migration_target(papi: Api, pid: str) -> int:
    resp = papi.call("POST", f"/v1/pipelines/{pid}/migrations", json={"stage_map": {}})
    assert resp.status_code == 200, resp.text
    return resp.json()["to_version"]


def test_a_new_version_scheduled_on_a_live_pipeline_takes_over_at_go_live(papi: Api):
    from activities.deals import load_snapshot

    pid = _live_on_v1_with_v2_saved(papi)
    future = (datetime.now(UTC) + timedelta(days=5)).replace(microsecond=0)
    resp = papi.call(
        "POST", f"/v1/pipelines/{pid}/activate", json={"go_live_at": future.isoformat()}
    )
    assert resp.status_code == 200, resp.text
    for shown in (resp.json(), papi.call("GET", f"/v1/pipelines/{pid}", as_="viewer").json()):
        assert (shown["active_version"], shown["current_version"]) == (1, 2)
        assert (shown["status"], shown["test_mode"]) == ("active", False)
        assert shown["scheduled"]["version"] == 2
        assert datetime.fromisoformat(shown["scheduled"]["go_live_at"]) == future
    versions = papi.call("GET", f"/v1/pipelines/{pid}/versions", as_="viewer").json()["data"]
    assert [(v["version"], v["active"], v["scheduled"]) for v in versions] == [
        (1, True, False),
        (2, False, True),
    ]
    snapshot = load_snapshot(papi.db, pid)  # what a new deal gets
    assert (snapshot.version, snapshot.test_mode) == (1, False)
    assert "demo" not in [s.key for s in snapshot.spec.stages]
    assert _default_migration_target(papi, pid) == 1
    with papi.db.session() as session:
        row = session.get(Pipeline, pid)
        assert row is not None
        assert (row.status, row.active_version, row.scheduled_version) == ("active", 1, 2)
        audit = session.exec(
            select(AuditEntry)
            .where(AuditEntry.target == pid, AuditEntry.action == "pipeline.activated")
            .order_by(AuditEntry.id)  # type: ignore[arg-type]
        ).all()
    assert audit[-1].data["status"] == "active" and audit[-1].data["active_version"] == 1
    assert audit[-1].data["scheduled"] == {"version": 2, "go_live_at": future.isoformat()}

    _move_go_live_into_the_past(papi, pid)
    shown = papi.call("GET", f"/v1/pipelines/{pid}", as_="viewer").json()
    assert (shown["active_version"], shown["status"], shown["scheduled"]) == (2, "active", None)
    versions = papi.call("GET", f"/v1/pipelines/{pid}/versions", as_="viewer").json()["data"]
    assert [(v["version"], v["active"], v["scheduled"]) for v in versions] == [
        (1, False, False),
        (2, True, False),
    ]
    snapshot = load_snapshot(papi.db, pid)
    assert (snapshot.version, snapshot.test_mode) == (2, False)
    assert "demo" in [s.key for s in snapshot.spec.stages]
    assert load_snapshot(papi.db, pid, 1).version == 1  # a deal on v1 stays on v1
    assert _default_migration_target(papi, pid) == 2


def test_a_live_pipeline_in_test_mode_stays_in_test_until_the_new_version_goes_live(papi: Api):
    from activities.deals import load_snapshot

    pid = _live_on_v1_with_v2_saved(papi, test_mode=True)
    future = datetime.now(UTC) + timedelta(days=5)
    resp = papi.call(
        "POST",
        f"/v1/pipelines/{pid}/activate",
        json={"go_live_at": future.isoformat(), "test_mode": True},
    )
    assert resp.status_code == 200, resp.text
    shown = resp.json()
    assert (shown["active_version"], shown["status"], shown["test_mode"]) == (1, "test", True)
    assert shown["scheduled"]["version"] == 2
    assert (load_snapshot(papi.db, pid).version, load_snapshot(papi.db, pid).test_mode) == (
        1,
        True,
    )
    _move_go_live_into_the_past(papi, pid)
    shown = papi.call("GET", f"/v1/pipelines/{pid}", as_="viewer").json()
    assert (shown["active_version"], shown["status"], shown["test_mode"]) == (2, "active", False)
    snapshot = load_snapshot(papi.db, pid)
    assert (snapshot.version, snapshot.test_mode) == (2, False)


def test_activating_now_drops_the_scheduled_version(papi: Api):
    pid = _live_on_v1_with_v2_saved(papi)
    future = datetime.now(UTC) + timedelta(days=5)
    # Test mode cannot apply to a version before it goes live: v1 stays live meanwhile.
    resp = papi.call(
        "POST",
        f"/v1/pipelines/{pid}/activate",
        json={"go_live_at": future.isoformat(), "test_mode": True},
    )
    assert errors(resp) == [(("body", "test_mode"), "test_mode_before_go_live")]
    shown = papi.call("GET", f"/v1/pipelines/{pid}", as_="viewer").json()
    assert (shown["active_version"], shown["scheduled"]) == (1, None)

    resp = papi.call(
        "POST", f"/v1/pipelines/{pid}/activate", json={"go_live_at": future.isoformat()}
    )
    assert resp.json()["scheduled"]["version"] == 2
    resp = papi.call("POST", f"/v1/pipelines/{pid}/activate", json={})
    assert resp.status_code == 200, resp.text
    shown = resp.json()
    assert (shown["active_version"], shown["status"], shown["scheduled"]) == (2, "active", None)
    assert shown["go_live_at"] is None
    with papi.db.session() as session:
        row = session.get(Pipeline, pid)
        assert row is not None and (row.active_version, row.scheduled_version) == (2, None)
        last = session.exec(
            select(AuditEntry)
            .where(AuditEntry.target == pid, AuditEntry.action == "pipeline.activated")
            .order_by(AuditEntry.id.desc())  # type: ignore[union-attr]
        ).first()
    assert last is not None and last.data["scheduled"] is None
    assert last.data["replaced_schedule"]["version"] == 2


# --------------------------------------------------------------------------- simulation


def test_simulation_over_http_refusal_approval_sla_and_rotting(papi: Api):
    pid = papi.create(body())["id"]
    script = {
        "deal": {"title": "Acme", "value": 0},
        "start_at": T0.isoformat(),
        "steps": [
            {"do": "move", "to_stage": "proposal"},
            {"do": "wait", "for": "PT9H"},
            {"do": "move", "to_stage": "qualified"},
            {"do": "move", "to_stage": "proposal", "after": "P15D", "fields": {"budget": 9}},
            {"do": "update", "value": 1000},
            {"do": "move", "to_stage": "proposal", "fields": {"budget": 9}},
            {"do": "approve", "subject": "alice", "after": "PT1H"},
        ],
    }
    resp = papi.call("POST", f"/v1/pipelines/{pid}/simulate", as_="viewer", json=script)
    assert resp.status_code == 200, resp.text
    result = resp.json()
    steps = result["steps"]
    assert [s["outcome"] for s in steps] == [
        "refused",
        "ok",
        "moved",
        "refused",
        "ok",
        "pending_approval",
        "moved",
    ]
    assert sorted(p["code"] for p in steps[0]["problems"]) == [
        "missing_required_field",
        "skip_denied",
        "validation_failed",
    ]
    assert [p["code"] for p in steps[3]["problems"]] == ["validation_failed"]
    assert steps[0]["sla"]["due_at"] == (T0 + timedelta(hours=8)).isoformat()
    timeline = result["timeline"]
    at = {e["kind"]: e["at"] for e in timeline}
    assert at["sla_warning"] == (T0 + timedelta(hours=4)).isoformat()
    assert at["sla_breached"] == (T0 + timedelta(hours=8)).isoformat()
    assert at["rotting"] == (T0 + timedelta(hours=9, days=14)).isoformat()
    assert steps[5]["approval_id"] == steps[6]["approval_id"]
    assert result["final"]["stage"] == "proposal" and result["final"]["fields"] == {"budget": 9}
    assert result["final"]["pending_approval"] is None
    assert any(e["kind"] == "action_planned" for e in timeline)

    # Nothing was stored: no deal, no history, no approval.
    assert papi.call("GET", "/v1/deals/sim", as_="viewer").status_code == 404


def test_simulation_of_an_older_version_and_bad_scripts(papi: Api):
    pid = papi.create(body())["id"]
    changed = body()
    changed["rules"] = {"skip": "allow", "backward": "allow"}
    assert papi.call("PUT", f"/v1/pipelines/{pid}", json=changed).status_code == 200
    script = {
        "deal": {"title": "A"},
        "steps": [{"do": "move", "to_stage": "won"}, {"do": "move", "to_stage": "lead"}],
    }
    now = papi.call("POST", f"/v1/pipelines/{pid}/simulate", json=script).json()
    assert now["version"] == 2
    skip = {
        "deal": {"title": "A"},
        "steps": [{"do": "move", "to_stage": "qualified"}, {"do": "move", "to_stage": "won"}],
    }
    assert (
        papi.call("POST", f"/v1/pipelines/{pid}/simulate", json=skip).json()["final"]["status"]
        == "won"
    )
    skip["steps"] = [{"do": "move", "to_stage": "proposal", "fields": {"budget": 1}}]
    skip["deal"]["value"] = 5
    v1 = papi.call("POST", f"/v1/pipelines/{pid}/simulate?version=1", json=skip).json()
    v2 = papi.call("POST", f"/v1/pipelines/{pid}/simulate?version=2", json=skip).json()
    assert (v1["version"], v1["steps"][0]["outcome"]) == (1, "refused")
    assert (v2["version"], v2["steps"][0]["outcome"]) == (2, "pending_approval")
    assert (
        papi.call("POST", f"/v1/pipelines/{pid}/simulate?version=7", json=skip).status_code == 404
    )

    bad = {
        "deal": {"title": "A", "stage": "nowhere", "value": -1},
        "steps": [{"do": "fly"}, {"do": "wait"}, {"do": "move"}],
    }
    found = errors(papi.call("POST", f"/v1/pipelines/{pid}/simulate", json=bad))
    locs = [loc for loc, _ in found]
    assert ("body", "deal", "value") in locs
    assert ("body", "steps", 0) in locs or ("body", "steps", 0, "do") in locs
    assert ("body", "steps", 1, "for") in locs
    assert ("body", "steps", 2, "to_stage") in locs
    found = errors(
        papi.call(
            "POST",
            f"/v1/pipelines/{pid}/simulate",
            json={
                "deal": {"stage": "nowhere"},
                "start_at": T0.isoformat(),
                "steps": [{"do": "activity", "at": "2024-01-01T00:00:00Z"}],
            },
        )
    )
    assert found == [
        (("body", "deal", "stage"), "unknown_stage"),
        (("body", "steps", 0, "at"), "invalid_step_time"),
    ]


def test_concurrent_changes_never_share_a_version_number(papi: Api):
    from concurrent.futures import ThreadPoolExecutor

    pid = papi.create(body())["id"]

    def put(i: int) -> int:
        return papi.call(
            "PUT", f"/v1/pipelines/{pid}", json=body(description=f"change {i}")
        ).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(put, range(8)))
    assert set(statuses) <= {200, 409}, statuses
    versions = papi.call("GET", f"/v1/pipelines/{pid}/versions", as_="viewer").json()["data"]
    assert [v["version"] for v in versions] == list(range(1, 2 + statuses.count(200)))


def test_openapi_documents_the_pipeline_and_script_bodies(papi: Api):
    import jsonschema

    doc = papi.http.get("/openapi.json").json()
    paths = doc["paths"]
    for path in ("versions", "versions/{version}", "diff", "audit", "simulate", "metrics"):
        assert f"/v1/pipelines/{{pipeline_id}}/{path}" in paths
    assert (
        "/v1/pipelines/{pipeline_id}/stages:reorder" in paths and "/v1/pipeline-templates" in paths
    )

    def schema(path: str, method: str) -> dict:
        return paths[path][method]["requestBody"]["content"]["application/json"]["schema"]

    jsonschema.validate(body(), schema("/v1/pipelines", "post"))
    with_bad_stage = body(stages=[{"key": "a", "name": "A", "probability": 150}])
    try:
        jsonschema.validate(with_bad_stage, schema("/v1/pipelines", "post"))
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("a probability of 150 passed the documented schema")
    script_schema = schema("/v1/pipelines/{pipeline_id}/simulate", "post")
    jsonschema.validate(
        {
            "deal": {"title": "A"},
            "steps": [{"do": "wait", "for": "PT1H"}, {"do": "approve", "subject": "x"}],
        },
        script_schema,
    )
