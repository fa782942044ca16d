"""Migrations over real HTTP, with real deal workflows on the Temporal dev server."""

from __future__ import annotations

import asyncio
import uuid

from temporalio.client import WorkflowExecutionStatus, WorkflowUpdateFailedError

from domain.deal import Actor
from tests.migrations.conftest import (
    SOURCE,
    STAGE_MAP,
    TARGET,
    Harness,
    migrated_entries,
    rows,
)
from workflows.messages import TransitionReply, TransitionRequest


def _ids(prefix: str, n: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"{prefix}-{tag}-{i:04d}" for i in range(n)]


async def _seed(h: Harness, source: str, n_lead: int, n_qualified: int, n_won: int) -> list[str]:
    ids = _ids("m", n_lead + n_qualified + n_won)
    stages = ["lead"] * n_lead + ["qualified"] * n_qualified + ["won"] * n_won
    return await h.deals(source, dict(zip(ids, stages, strict=True)))


async def test_validation_lists_every_problem(harness: Harness) -> None:
    h = harness
    source = await h.pipeline(SOURCE)
    target = await h.pipeline(TARGET)
    await _seed(h, source, 2, 1, 0)
    resp = await h.call(
        "POST",
        f"/v1/pipelines/{source}/migrations",
        json={
            "to_pipeline_id": target,
            "stage_map": {"lead": "nowhere", "nope": "new"},
            "dry_run": False,
        },
    )
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    codes = sorted(e["code"] for e in resp.json()["errors"])
    assert codes == ["unknown_source_stage", "unknown_target_stage", "unmapped_stage"]
    messages = " | ".join(e["msg"] for e in resp.json()["errors"])
    assert "'nowhere'" in messages and "'nope'" in messages and "'qualified'" in messages

    resp = await h.call(
        "POST",
        f"/v1/pipelines/{source}/migrations",
        json={"to_pipeline_id": "pl_missing", "stage_map": {"lead": "new"}},
    )
    assert resp.status_code == 422
    assert [e["loc"] for e in resp.json()["errors"]] == [["body", "to_pipeline_id"]]

    resp = await h.call(
        "POST",
        f"/v1/pipelines/{source}/migrations",
        json={"to_pipeline_id": target, "to_version": 9, "stage_map": STAGE_MAP},
    )
    assert resp.status_code == 422
    assert [e["loc"] for e in resp.json()["errors"]] == [["body", "to_version"]]

    for body in ({"stage_map": {}, "batch_size": 0}, {"stage_map": {}, "rate_per_second": 0}):
        assert (
            await h.call("POST", f"/v1/pipelines/{source}/migrations", json=body)
        ).status_code == 422
    resp = await h.call("POST", "/v1/pipelines/pl_nope/migrations", json={"stage_map": {}})
    assert resp.status_code == 404
    resp = await h.call(
        "POST", f"/v1/pipelines/{source}/migrations", json={"stage_map": {}}, as_="viewer"
    )
    assert resp.status_code == 403


async def test_dry_run_then_real_run_moves_every_deal_once(harness: Harness) -> None:
    h = harness
    source = await h.pipeline(SOURCE)
    target = await h.pipeline(TARGET)
    ids = await _seed(h, source, 15, 10, 5)  # the 5 won deals' workflows have completed
    before = rows(h.db, ids)

    partial = {"lead": "new", "qualified": "working"}
    resp = await h.call(
        "POST",
        f"/v1/pipelines/{source}/migrations",
        json={"to_pipeline_id": target, "stage_map": partial},
    )
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["status"] == "dry_run"
    assert report["total"] == 25
    assert report["by_stage"] == {
        "lead": {"to": "new", "count": 15},
        "qualified": {"to": "working", "count": 10},
    }
    assert report["unmappable"] == [{"stage": "won", "count": 5}]
    assert (await h.migration(report["id"]))["status"] == "dry_run"
    after_dry_run = rows(h.db, ids)
    assert {d: (r.pipeline_id, r.stage, r.revision) for d, r in after_dry_run.items()} == {
        d: (r.pipeline_id, r.stage, r.revision) for d, r in before.items()
    }

    resp = await h.call(
        "POST",
        f"/v1/pipelines/{source}/migrations",
        json={
            "to_pipeline_id": target,
            "stage_map": STAGE_MAP,
            "dry_run": False,
            "batch_size": 7,
            "rate_per_second": 50,
        },
    )
    assert resp.status_code == 202, resp.text
    started = resp.json()
    assert started["status"] == "running" and started["total"] == 30
    assert resp.headers["location"] == f"/v1/migrations/{started['id']}"
    again = await h.call(
        "POST",
        f"/v1/pipelines/{source}/migrations",
        json={"to_pipeline_id": target, "stage_map": STAGE_MAP, "dry_run": False},
    )
    assert again.status_code == 409, again.text  # the first runs for 30 / 50 s at least

    done = await h.wait_for(started["id"], "completed", "failed", "cancelled")
    assert done["status"] == "completed", done
    assert (done["total"], done["migrated"], done["skipped"], done["failed"]) == (30, 30, 0, 0)
    assert done["started_at"] and done["finished_at"]
    assert done["deals_per_second"] > 0

    after = rows(h.db, ids)
    for deal_id, row in after.items():
        old = before[deal_id]
        assert row.pipeline_id == target, deal_id
        assert row.stage == STAGE_MAP[old.stage], deal_id
        assert row.status == ("won" if old.stage == "won" else "open"), deal_id
        assert row.state["migrations"] == [started["id"]]
    assert migrated_entries(h.db, ids, started["id"]) == dict.fromkeys(ids, 1)
    # The won deals had no running workflow: they were moved in the read model directly.
    won = next(d for d in ids if before[d].stage == "won")
    desc = await h.client.get_workflow_handle(f"deal-{won}").describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED

    # A migrated deal lives on in its new pipeline: its workflow applies the new rules.
    open_deal = next(d for d in ids if after[d].stage == "new")
    handle = h.client.get_workflow_handle(f"deal-{open_deal}")
    reply = await handle.execute_update(
        "transition",
        TransitionRequest(to_stage="working", actor=Actor(subject="tester", role="admin")),
        result_type=TransitionReply,
    )
    assert reply.outcome == "moved"
    assert rows(h.db, [open_deal])[open_deal].stage == "working"


async def test_pause_resume_cancel(harness: Harness) -> None:
    h = harness
    source = await h.pipeline(SOURCE)
    target = await h.pipeline(TARGET)
    ids = await _seed(h, source, 40, 0, 0)
    resp = await h.call(
        "POST",
        f"/v1/pipelines/{source}/migrations",
        json={
            "to_pipeline_id": target,
            "stage_map": STAGE_MAP,
            "dry_run": False,
            "batch_size": 2,
            "rate_per_second": 10,
        },
    )
    assert resp.status_code == 202, resp.text
    mid = resp.json()["id"]
    resp = await h.call("POST", f"/v1/migrations/{mid}/pause")
    assert resp.status_code == 202 and resp.json()["requested"] == "pause"
    paused = await h.wait_for(mid, "paused")
    assert paused["migrated"] < 40
    # Paused: nothing moves. The counters and the deals agree with each other.
    moved = migrated_entries(h.db, ids, mid)
    assert len(moved) == paused["migrated"]
    assert (await h.migration(mid))["migrated"] == paused["migrated"]

    assert (await h.call("POST", f"/v1/migrations/{mid}/resume")).status_code == 202
    await h.wait_for(mid, "running", "completed")
    for _ in range(2400):
        view = await h.migration(mid)
        if view["migrated"] > paused["migrated"]:
            break
        await asyncio.sleep(0.05)
    assert view["migrated"] > paused["migrated"]

    assert (await h.call("POST", f"/v1/migrations/{mid}/cancel")).status_code == 202
    final = await h.wait_for(mid, "cancelled", "completed")
    assert final["status"] == "cancelled", final
    assert final["finished_at"] is not None
    assert 0 < final["migrated"] < 40
    moved = migrated_entries(h.db, ids, mid)
    assert len(moved) == final["migrated"] and set(moved.values()) == {1}
    now = rows(h.db, ids)
    assert sum(1 for r in now.values() if r.pipeline_id == target) == final["migrated"]
    assert all(now[d].pipeline_id == source for d in ids if d not in moved)

    for action in ("pause", "resume", "cancel"):
        resp = await h.call("POST", f"/v1/migrations/{mid}/{action}")
        assert resp.status_code == 409, resp.text
    assert (await h.call("POST", "/v1/migrations/mig_nope/pause")).status_code == 404
    assert (await h.call("GET", "/v1/migrations/mig_nope", as_="viewer")).status_code == 404


async def test_a_version_migration_keeps_the_pipeline(harness: Harness) -> None:
    """Same pipeline, new version: ``to_pipeline_id`` defaults to the source pipeline."""
    h = harness
    source = await h.pipeline(SOURCE)
    ids = await _seed(h, source, 3, 2, 0)
    stages = list(SOURCE["stages"])
    v2 = {
        **SOURCE,
        "stages": [*stages[:2], {"key": "demo", "name": "Demo", "probability": 60}, *stages[2:]],
    }
    resp = await h.call("PUT", f"/v1/pipelines/{source}", json=v2)
    assert resp.status_code == 200, resp.text
    resp = await h.call(
        "POST",
        f"/v1/pipelines/{source}/migrations",
        json={
            "to_version": 2,
            "stage_map": {"lead": "lead", "qualified": "demo"},
            "dry_run": False,
            "filter": {"status": "open"},
        },
    )
    assert resp.status_code == 202, resp.text
    done = await h.wait_for(resp.json()["id"], "completed", "failed")
    assert (done["status"], done["migrated"]) == ("completed", 5), done
    after = rows(h.db, ids)
    assert {r.pipeline_version for r in after.values()} == {2}
    assert sorted(r.stage for r in after.values()) == ["demo", "demo", "lead", "lead", "lead"]


async def test_the_migrate_update_applies_once(harness: Harness) -> None:
    h = harness
    source = await h.pipeline(SOURCE)
    target = await h.pipeline(TARGET)
    [deal_id] = await _seed(h, source, 1, 0, 0)
    from activities.deals import load_snapshot
    from workflows.messages import MigrateReply, MigrateRequest

    request = MigrateRequest(
        migration_id="mig_twice",
        source_pipeline_id=source,
        pipeline=load_snapshot(h.db, target),
        stage_map=STAGE_MAP,
    )
    handle = h.client.get_workflow_handle(f"deal-{deal_id}")
    first = await handle.execute_update("migrate", request, result_type=MigrateReply)
    second = await handle.execute_update("migrate", request, result_type=MigrateReply)
    assert (first.outcome, first.stage) == ("migrated", "new")
    assert (second.outcome, second.stage) == ("already_migrated", "new")
    assert second.revision == first.revision
    row = rows(h.db, [deal_id])[deal_id]
    assert (row.pipeline_id, row.stage) == (target, "new")
    assert migrated_entries(h.db, [deal_id], "mig_twice") == {deal_id: 1}

    # A map to a stage the target does not have is refused before it reaches the history.
    bad = request.model_copy(update={"migration_id": "mig_bad", "stage_map": {"new": "nope"}})
    try:
        await handle.execute_update("migrate", bad, result_type=MigrateReply)
    except WorkflowUpdateFailedError as exc:
        assert "nope" in str(exc.cause)
    else:
        raise AssertionError("the update was accepted")


async def test_openapi_documents_the_migration_endpoints(harness: Harness) -> None:
    import jsonschema

    doc = (await harness.http.get("/openapi.json")).json()
    paths = doc["paths"]
    post = paths["/v1/pipelines/{pipeline_id}/migrations"]["post"]
    assert {"200", "202", "422"} <= set(post["responses"])
    for action in ("pause", "resume", "cancel"):
        assert f"/v1/migrations/{{migration_id}}/{action}" in paths
    assert "get" in paths["/v1/migrations/{migration_id}"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    # A root that has the components, so that the #/components/... references resolve.
    validator = jsonschema.Draft202012Validator({"$ref": ref, "components": doc["components"]})
    validator.validate({"stage_map": {"a": "b"}, "filter": {"status": "open"}, "dry_run": False})
    assert list(validator.iter_errors({"stage_map": {}, "batch_size": 5000}))
