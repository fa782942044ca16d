"""The API's /metrics holds dealflow_ series only (the contract), the process's own included."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import Api


def test_every_metric_of_the_api_is_a_dealflow_one(api: Api) -> None:
    text = api.http.get("/metrics").text
    names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    assert {n for n in names if not n.startswith("dealflow_")} == set()
    assert "dealflow_process_cpu_seconds_total" in names
    assert "dealflow_webhook_ack_seconds_count" in names
