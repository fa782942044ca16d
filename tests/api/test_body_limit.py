"""Every API request body is held to DEALFLOW_MAX_BODY_BYTES (1 MiB), as webhooks are: a larger
one is a 413 problem before any handler (or Temporal update) sees it, declared or chunked."""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from tests.api.conftest import ADMIN_TOKEN, Api, assert_problem

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}


def pipeline_body(padding: int) -> bytes:
    return orjson.dumps(
        {
            "name": "big",
            "description": "x" * padding,
            "type": "sales",
            "currency": "USD",
            "probability_mode": "stage",
            "stages": [{"key": "lead", "name": "Lead", "probability": 10}],
        }
    )


def chunked(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), 64 * 1024):
        yield body[start : start + 64 * 1024]


def test_a_body_over_the_limit_is_413_declared_or_chunked(api: Api) -> None:
    big = pipeline_body(2 * 1024 * 1024)
    declared = api.http.post("/v1/pipelines", content=big, headers=AUTH)
    problem = assert_problem(declared, 413)
    assert "the limit is 1048576 bytes" in problem["detail"]
    streamed = api.http.post("/v1/pipelines", content=chunked(big), headers=AUTH)
    assert "content-length" not in {k.lower() for k in streamed.request.headers}
    assert "over the limit of 1048576 bytes" in assert_problem(streamed, 413)["detail"]
    moved = api.http.post(
        "/v1/deals/any/transitions",
        content=orjson.dumps({"to_stage": "won", "fields": {"x": "y" * 2_000_000}}),
        headers=AUTH,
    )
    assert_problem(moved, 413)


def test_bodies_within_the_limit_go_through_declared_or_chunked(api: Api) -> None:
    small = pipeline_body(100)
    assert api.http.post("/v1/pipelines", content=small, headers=AUTH).status_code == 201
    resp = api.http.post("/v1/pipelines", content=chunked(pipeline_body(100_000)), headers=AUTH)
    assert resp.status_code == 201, resp.text
    assert resp.json()["description"] == "x" * 100_000
