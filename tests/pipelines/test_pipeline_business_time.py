"""SLA targets a pipeline's business calendar cannot count: a 422 naming the target and the
bound, over real HTTP on SQLite and PostgreSQL (before, the pipeline was stored and entering the
stage failed: a 500 in simulate, a dead-lettered deal)."""

from __future__ import annotations

from tests.pipelines.conftest import Api
from tests.pipelines.test_pipeline_inputs import CALENDAR, T0, body, pipeline_count, problem

# --------------------------------------------------------------------------- business time


def test_an_sla_target_the_calendar_cannot_count_is_a_422_naming_the_bound(papi: Api):
    data = body(calendar=CALENDAR)
    data["stages"][0]["sla"] = {"target": "P9600D"}  # over 26 years of 40-hour weeks
    before = pipeline_count(papi)
    resp = papi.call("POST", "/v1/pipelines", json=data)
    found = problem(resp, 422)["errors"]
    assert [(tuple(e["loc"]), e["code"]) for e in found] == [
        (("body", "stages", 0, "sla", "target"), "sla_beyond_calendar")
    ]
    assert "at most P8666DT16H of working time" in found[0]["msg"]
    assert pipeline_count(papi) == before


def test_the_longest_sla_target_a_calendar_allows_simulates(papi: Api):
    data = body(calendar=CALENDAR)
    data["stages"][0]["sla"] = {"target": "P8666DT16H"}  # the bound: 5,200 weeks of 40 hours
    pid = papi.create(data)["id"]
    script = {"start_at": T0.isoformat(), "steps": [{"do": "wait", "for": "PT1H"}]}
    resp = papi.call("POST", f"/v1/pipelines/{pid}/simulate", json=script)
    assert resp.status_code == 200, resp.text


def test_a_one_day_week_counts_an_sla_from_after_that_days_window(papi: Api):
    calendar = {"timezone": "UTC", "weekdays": [6], "start": "09:00", "end": "17:00"}
    data = body(calendar=calendar)
    pid = papi.create(data)["id"]
    sunday_evening = "2025-01-05T18:00:00Z"
    resp = papi.call("POST", f"/v1/pipelines/{pid}/simulate", json={"start_at": sunday_evening})
    assert resp.status_code == 200, resp.text  # was a 500: "no working time left"
    assert resp.json()["final"]["sla"]["due_at"].startswith("2025-01-12T17:00:00")
