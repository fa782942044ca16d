"""``POST /v1/pipelines/{id}/activate``: ``go_live_at`` in UTC and within range, and a future
go-live never takes the live version off the air; over real HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlmodel import select

from store.models import AuditEntry
from tests.pipelines.conftest import Api
from tests.pipelines.test_pipeline_inputs import body, locs, problem

# --------------------------------------------------------------------------- go_live_at


def test_go_live_at_with_an_offset_is_stored_and_shown_in_utc(papi: Api):
    pid = papi.create(body())["id"]
    local = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    given = local.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert given.endswith("+02:00")
    resp = papi.call("POST", f"/v1/pipelines/{pid}/activate", json={"go_live_at": given})
    assert resp.status_code == 200, resp.text
    utc = local.isoformat()
    assert resp.json()["go_live_at"] == utc
    assert resp.json()["scheduled"]["go_live_at"] == utc
    assert papi.call("GET", f"/v1/pipelines/{pid}").json()["go_live_at"] == utc
    with papi.db.session() as session:
        entry = session.exec(
            select(AuditEntry)
            .where(AuditEntry.target == pid, AuditEntry.action == "pipeline.activated")
            .order_by(AuditEntry.id.desc())  # type: ignore[union-attr]
        ).first()
    assert entry is not None
    assert entry.data["go_live_at"] == utc and entry.data["scheduled"]["go_live_at"] == utc


@pytest.mark.parametrize(
    "when",
    [
        "9999-12-31T23:59:59-01:00",  # past the last representable instant in UTC
        "0001-01-01T00:00:00+01:00",  # before the first one
        "9000-06-01T00:00:00Z",
        "over 100 years ahead",
    ],
)
def test_a_go_live_at_out_of_range_is_a_422(papi: Api, when: str):
    if when == "over 100 years ahead":
        when = (datetime.now(UTC) + timedelta(days=36525 + 2)).isoformat()
    pid = papi.create(body())["id"]
    resp = papi.call("POST", f"/v1/pipelines/{pid}/activate", json={"go_live_at": when})
    assert locs(resp) == [("body", "go_live_at")]
    shown = papi.call("GET", f"/v1/pipelines/{pid}").json()
    assert (shown["status"], shown["go_live_at"]) == ("draft", None)


# --------------------------------------------------------------------------- activating twice


@pytest.mark.parametrize("test_mode", [False, True])
def test_a_future_go_live_on_the_live_version_is_a_409(papi: Api, test_mode: bool):
    pid = papi.create(body())["id"]
    resp = papi.call("POST", f"/v1/pipelines/{pid}/activate", json={})
    assert resp.json()["status"] == "active"
    future = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    resp = papi.call(
        "POST",
        f"/v1/pipelines/{pid}/activate",
        json={"go_live_at": future, "test_mode": test_mode},
    )
    found = problem(resp, 409)
    assert "already live" in found["detail"] and "PUT" in found["detail"]
    shown = papi.call("GET", f"/v1/pipelines/{pid}").json()
    assert (shown["status"], shown["test_mode"], shown["active_version"]) == ("active", False, 1)
    assert (shown["go_live_at"], shown["scheduled"]) == (None, None)
    with papi.db.session() as session:
        entries = session.exec(
            select(AuditEntry).where(
                AuditEntry.target == pid, AuditEntry.action == "pipeline.activated"
            )
        ).all()
    assert len(entries) == 1

    # A new version can be scheduled; the live one stays live meanwhile.
    resp = papi.call("PUT", f"/v1/pipelines/{pid}", json=body())
    assert resp.status_code == 200, resp.text
    resp = papi.call("POST", f"/v1/pipelines/{pid}/activate", json={"go_live_at": future})
    assert resp.status_code == 200, resp.text
    assert (resp.json()["status"], resp.json()["active_version"]) == ("active", 1)
    assert resp.json()["scheduled"]["version"] == 2


def test_a_live_version_in_test_mode_is_not_taken_off_the_air_either(papi: Api):
    pid = papi.create(body())["id"]
    assert (
        papi.call("POST", f"/v1/pipelines/{pid}/activate", json={"test_mode": True}).json()[
            "status"
        ]
        == "test"
    )
    future = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    resp = papi.call("POST", f"/v1/pipelines/{pid}/activate", json={"go_live_at": future})
    problem(resp, 409)
    shown = papi.call("GET", f"/v1/pipelines/{pid}").json()
    assert (shown["status"], shown["test_mode"], shown["scheduled"]) == ("test", True, None)
    # Activating at once still switches test mode off.
    resp = papi.call("POST", f"/v1/pipelines/{pid}/activate", json={})
    assert (resp.json()["status"], resp.json()["test_mode"]) == ("active", False)
