"""The members a pipeline body cannot go without (``type``, ``currency``, ``probability_mode``
as the contract lists them), on ``POST`` and ``PUT``, over real HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

import copy

import pytest

from tests.pipelines.conftest import Api
from tests.pipelines.test_pipeline_inputs import body, locs, pipeline_count, problem

# --------------------------------------------------------------------------- required members


@pytest.mark.parametrize("missing", ["type", "currency", "probability_mode"])
def test_a_pipeline_without_a_required_member_is_a_422_naming_it(papi: Api, missing: str):
    data = body()
    del data[missing]
    before = pipeline_count(papi)
    resp = papi.call("POST", "/v1/pipelines", json=data)
    found = problem(resp, 422)["errors"]
    assert [(tuple(e["loc"]), e["msg"]) for e in found] == [(("body", missing), "field required")]
    assert pipeline_count(papi) == before

    pid = papi.create(body())["id"]
    resp = papi.call("PUT", f"/v1/pipelines/{pid}", json=data)
    assert locs(resp) == [("body", missing)]


def test_every_missing_member_is_named_at_once(papi: Api):
    data = {k: v for k, v in body().items() if k not in ("type", "currency", "probability_mode")}
    resp = papi.call("POST", "/v1/pipelines", json=data)
    assert sorted(locs(resp)) == [
        ("body", "currency"),
        ("body", "probability_mode"),
        ("body", "type"),
    ]


def test_a_template_fills_type_and_probability_mode_but_not_currency(papi: Api):
    created = papi.create({"name": "From a template", "currency": "BRL", "template": "sales"})
    assert (created["type"], created["probability_mode"]) == ("sales", "stage")
    resp = papi.call("POST", "/v1/pipelines", json={"name": "No currency", "template": "sales"})
    assert locs(resp) == [("body", "currency")]


def test_openapi_lists_the_required_members(papi: Api):
    """currency always; type and probability_mode unless a template fills them in."""
    doc = papi.http.get("/openapi.json").json()
    for path, method in (("/v1/pipelines", "post"), ("/v1/pipelines/{pipeline_id}", "put")):
        schema = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        assert {"name", "currency"} <= set(schema["required"]), schema["required"]
        branches = [set(alt.get("required", [])) for alt in schema["anyOf"]]
        assert {"template"} in branches
        assert any({"type", "probability_mode"} <= b for b in branches), branches


def test_stored_pipelines_are_unchanged_by_bad_input(papi: Api):
    data = body()
    pid = papi.create(copy.deepcopy(data))["id"]
    bad = copy.deepcopy(data)
    bad["stages"][0]["key"] = "x\x00"
    del bad["currency"]
    resp = papi.call("PUT", f"/v1/pipelines/{pid}", json=bad)
    assert {("body", "stages", 0, "key"), ("body", "currency")} <= set(locs(resp))
    assert papi.call("GET", f"/v1/pipelines/{pid}/versions").json()["data"][-1]["version"] == 1
