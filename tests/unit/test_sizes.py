"""Size budgets that keep deals inside Temporal's payload limit (pure)."""

from __future__ import annotations

from domain.sizes import MAX_DEAL_FIELDS_BYTES, fields_problem, json_size


def test_json_size_counts_utf8_bytes_of_compact_json() -> None:
    assert json_size({"a": 1}) == len(b'{"a":1}')
    assert json_size({"é": "€"}) == len('{"é":"€"}'.encode())


def test_fields_within_the_budget_pass_and_the_merged_size_counts() -> None:
    half = "x" * (MAX_DEAL_FIELDS_BYTES // 2)
    assert fields_problem({}, None) is None
    assert fields_problem({}, {"a": half}) is None
    # Each half fits alone; together (the deal keeps both) they do not.
    problem = fields_problem({"a": half}, {"b": half})
    assert problem is not None and "a deal keeps at most 262,144 (256 KiB)" in problem
    # Replacing a field counts its new value only.
    assert fields_problem({"a": half}, {"a": "small"}) is None
