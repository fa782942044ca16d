"""A NUL in a path or a query string is a 404 / 422 problem, never a 500 (PostgreSQL cannot
compare a string holding a NUL, so every lookup by such an id or filter failed)."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api, assert_problem


@pytest.mark.parametrize(
    "path",
    [
        "/v1/deals/a%00b",
        "/v1/deals/a%00b/history",
        "/v1/sources/a%00b",
        "/v1/events/evt%00x",
        "/v1/pipelines/pl%00x",
        "/v1/dead-letters/evt%00x",
        "/v1/migrations/m%00x",
    ],
)
def test_a_nul_in_the_path_is_404(api: Api, path: str) -> None:
    assert "NUL" in assert_problem(api.admin("GET", path), 404)["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/deals?owner=%00",
        "/v1/deals?external_id=crm:%00",
        "/v1/dead-letters?source_id=%00",
        "/v1/events?deal_id=a%00",
        "/v1/approvals?deal_id=%00",
    ],
)
def test_a_nul_in_the_query_is_422(api: Api, path: str) -> None:
    problem = assert_problem(api.admin("GET", path), 422)
    assert problem["errors"] == [{"loc": ["query"], "msg": "NUL character"}]


def test_other_lookups_still_answer(api: Api) -> None:
    assert api.admin("GET", "/v1/deals?owner=nobody").json()["data"] == []
    assert_problem(api.admin("GET", "/v1/deals/no-such-deal"), 404)
