"""``/v1/events``: one event, and lists filtered and paginated."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.api.conftest import Api, assert_problem, deal_created, dumps, native, sign_hmac, uid


def send(api: Api, src: dict, payload: dict) -> dict:
    body = dumps(payload)
    resp = api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid("dlv")))
    assert resp.status_code in (200, 202), resp.text
    return resp.json()


def test_one_event(api: Api) -> None:
    src = api.create_source("hmac")
    deal_id = uid("deal")
    body = dumps(deal_created(deal_id))
    before = datetime.now(UTC)
    resp = api.webhook(src["id"], body, sign_hmac(src["secret"], body, "dlv-1"))
    event = api.event(resp.json()["event_id"])
    assert event == {
        "event_id": resp.json()["event_id"],
        "source_id": src["id"],
        "delivery_id": "dlv-1",
        "type": "deal.created",
        "status": "accepted",
        "attempts": 0,
        "last_error": None,
        "received_at": event["received_at"],
        "processed_at": None,
        "deal_id": deal_id,
    }
    received = datetime.fromisoformat(event["received_at"].replace("Z", "+00:00"))
    assert received.tzinfo is not None
    assert abs((received - before).total_seconds()) < 60


def test_unknown_event_and_auth(api: Api) -> None:
    assert_problem(api.admin("GET", "/v1/events/evt_nope"), 404)
    assert_problem(api.http.get("/v1/events"), 401)
    assert_problem(api.http.get("/v1/events/evt_nope"), 401)


def test_list_filters_and_pagination(api: Api) -> None:
    src = api.create_source("hmac")
    other = api.create_source("hmac")
    created = [send(api, src, deal_created())["event_id"] for _ in range(5)]
    updated = send(api, src, native("deal.updated", deal_id="d1", value=3))["event_id"]
    ignored = send(api, src, native("deal.unknown", deal_id="d1"))["event_id"]
    send(api, other, deal_created())

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"source_id": src["id"], "limit": 3}
        if cursor:
            params["starting_after"] = cursor
        resp = api.admin("GET", "/v1/events", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert len(page["data"]) <= 3
        seen += [e["event_id"] for e in page["data"]]
        pages += 1
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert pages == 3
    assert seen == sorted([*created, updated, ignored], reverse=True)  # newest first
    assert len(set(seen)) == 7

    def ids(**params: str) -> list[str]:
        resp = api.admin("GET", "/v1/events", params={"source_id": src["id"], **params})
        assert resp.status_code == 200, resp.text
        return [e["event_id"] for e in resp.json()["data"]]

    assert ids(type="deal.updated") == [updated]
    assert set(ids(type="deal.created")) == set(created)
    assert ids(status="ignored") == [ignored]
    assert set(ids(status="accepted")) == {*created, updated}
    assert ids(status="processed") == []
    assert ids(deal_id="d1") == [updated]  # an ignored event has no deal


def test_list_refuses_bad_filters(api: Api) -> None:
    assert_problem(api.admin("GET", "/v1/events", params={"status": "nope"}), 422)
    assert_problem(api.admin("GET", "/v1/events", params={"limit": 0}), 422)
    assert_problem(api.admin("GET", "/v1/events", params={"limit": 10_000}), 422)
