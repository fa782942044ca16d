"""Bad pipeline input over real HTTP on SQLite and PostgreSQL: every one a problem document
naming what is wrong (never a 500), nothing stored. Here: control characters in names, keys
and the other strings of a pipeline (PostgreSQL text cannot hold NUL). The helpers are shared
with the other ``test_pipeline_*`` input tests.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlmodel import select

from store.models import Pipeline
from tests.pipelines.conftest import Api

T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
CALENDAR = {
    "timezone": "Europe/Berlin",
    "weekdays": [0, 1, 2, 3, 4],
    "start": "09:00",
    "end": "17:00",
}


def body(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": f"Inputs {uuid.uuid4().hex[:6]}",
        "description": "for bad inputs",
        "type": "sales",
        "currency": "EUR",
        "probability_mode": "stage",
        "stages": [
            {"key": "lead", "name": "Lead", "probability": 10, "sla": {"target": "PT8H"}},
            {"key": "qualified", "name": "Qualified", "probability": 40},
            {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
            {"key": "lost", "name": "Lost", "probability": 0, "outcome": "lost"},
        ],
        "automations": [
            {
                "name": "Welcome",
                "trigger": {"on": "stage_entered", "stage": "lead"},
                "actions": [{"do": "notify", "to": "owner", "template": "Hello {title}"}],
            }
        ],
    }
    data.update(changes)
    return data


def problem(resp, status: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    return resp.json()  # type: ignore[no-any-return]


def locs(resp) -> list[tuple[Any, ...]]:  # type: ignore[no-untyped-def]
    return [tuple(e["loc"]) for e in problem(resp, 422)["errors"]]


def pipeline_count(papi: Api) -> int:
    with papi.db.session() as session:
        return len(session.exec(select(Pipeline.id)).all())


# --------------------------------------------------------------------------- control characters


def _set(data: dict[str, Any], path: tuple[Any, ...], value: str) -> None:
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


CONTROL_CASES = [
    (("name",), "Sales\x00"),
    (("description",), "two\x00parts"),
    (("stages", 0, "name"), "Le\x00ad"),
    (("stages", 0, "key"), "le\x00ad"),
    (("stages", 1, "key"), "quali\tfied"),  # a tab is no part of a key
    (("stages", 1, "name"), "Quali\x1bfied"),
    (("automations", 0, "name"), "Wel\x00come"),
    (("automations", 0, "actions", 0, "template"), "Hello\x00 {title}"),
    (("automations", 0, "actions", 0, "to"), "own\x00er"),
]


@pytest.mark.parametrize(("path", "value"), CONTROL_CASES, ids=lambda v: repr(v))
def test_a_control_character_is_a_422_naming_the_field(papi: Api, path: tuple, value: str):
    data = body()
    _set(data, path, value)
    before = pipeline_count(papi)
    resp = papi.call("POST", "/v1/pipelines", json=data)
    found = problem(resp, 422)["errors"]
    mine = [e for e in found if tuple(e["loc"]) == ("body", *path)]
    assert mine, found
    assert "control character" in mine[0]["msg"]
    assert pipeline_count(papi) == before

    pid = papi.create(body())["id"]
    resp = papi.call("PUT", f"/v1/pipelines/{pid}", json=data)
    assert ("body", *path) in locs(resp)
    shown = papi.call("GET", f"/v1/pipelines/{pid}", as_="viewer").json()
    assert shown["current_version"] == 1


def test_tabs_and_newlines_stay_allowed_in_names_and_descriptions(papi: Api):
    created = papi.create(body(description="line one\nline two\twith a tab\r\n"))
    assert created["description"] == "line one\nline two\twith a tab\r\n"
