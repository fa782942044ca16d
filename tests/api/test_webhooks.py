"""The webhook ingress over real HTTP: signatures made by independent code get 202; one byte
off gets 401; duplicates, ignored types and mappings answer as the contract says."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.api.conftest import (
    Api,
    assert_problem,
    deal_created,
    dumps,
    native,
    sign_github,
    sign_hmac,
    sign_standard,
    sign_stripe,
    uid,
)


def flip(body: bytes) -> bytes:
    """The same body with one byte changed (inside a string value, so it stays valid JSON)."""
    i = body.index(b"Big deal") + 1
    return body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]


def stripe_body(**extra: object) -> bytes:
    return dumps({"id": uid("evt"), **deal_created(), **extra})


# --------------------------------------------------------------------------- each scheme


def test_standard_webhooks_signed_by_the_library(api: Api) -> None:
    src = api.create_source("standard")
    body = dumps(deal_created())
    headers = sign_standard(src["secret"], uid("msg"), body)
    resp = api.webhook(src["id"], body, headers)
    assert resp.status_code == 202, resp.text
    assert resp.headers["content-type"] == "application/json"
    out = resp.json()
    assert out["status"] == "accepted" and out["event_id"].startswith("evt_")
    assert api.event(out["event_id"])["status"] == "accepted"

    other = flip(body)
    assert_problem(api.webhook(src["id"], other, sign_standard(src["secret"], uid(), body)), 401)
    assert api.stored(src["id"]) == 1


def test_stripe_signed_by_the_stripe_library(api: Api) -> None:
    secret = "whsec_" + "s3cr3t" * 6
    src = api.create_source("stripe", secret=secret)
    assert src["secret"] == secret
    body = stripe_body()
    resp = api.webhook(src["id"], body, sign_stripe(secret, body))
    assert resp.status_code == 202, resp.text
    event = api.event(resp.json()["event_id"])
    assert event["delivery_id"] == json.loads(body)["id"]
    assert event["type"] == "deal.created"

    body2 = stripe_body()
    assert_problem(api.webhook(src["id"], flip(body2), sign_stripe(secret, body2)), 401)
    assert api.stored(src["id"]) == 1


def test_github_signed_as_documented(api: Api) -> None:
    mapping = {
        "events": {
            "issues": {
                "type": "deal.activity",
                "data": {"deal_id": "body.issue.title", "kind": "'github_issue'"},
            }
        }
    }
    src = api.create_source("github", mapping=mapping)
    body = dumps({"action": "opened", "issue": {"title": "Big deal"}})
    resp = api.webhook(src["id"], body, sign_github(src["secret"], body, uid("gh"), "issues"))
    assert resp.status_code == 202, resp.text
    event = api.event(resp.json()["event_id"])
    assert event["type"] == "deal.activity" and event["deal_id"] == "Big deal"

    headers = sign_github(src["secret"], body, uid("gh"), "issues")
    assert_problem(api.webhook(src["id"], flip(body), headers), 401)
    assert api.stored(src["id"]) == 1


def test_github_example_from_the_docs(api: Api) -> None:
    # GitHub's documented test vector: secret "It's a Secret to Everybody", payload
    # "Hello, World!" -> sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17
    src = api.create_source("github", secret="It's a Secret to Everybody")
    body = b"Hello, World!"
    headers = {
        "X-Hub-Signature-256": (
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        ),
        "X-GitHub-Delivery": uid("gh"),
        "X-GitHub-Event": "ping",
    }
    # Signature fine, but the body is not JSON: 422, not stored.
    body_out = assert_problem(api.webhook(src["id"], body, headers), 422)
    assert body_out["errors"][0]["loc"] == ["body"]
    changed = {**headers, "X-Hub-Signature-256": headers["X-Hub-Signature-256"][:-1] + "8"}
    assert_problem(api.webhook(src["id"], body, changed), 401)
    assert api.stored(src["id"]) == 0


def test_hmac_scheme(api: Api) -> None:
    src = api.create_source("hmac")
    body = dumps(deal_created())
    resp = api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid("e")))
    assert resp.status_code == 202, resp.text
    assert_problem(api.webhook(src["id"], flip(body), sign_hmac(src["secret"], body, uid())), 401)
    assert api.stored(src["id"]) == 1


def test_stripe_with_several_v1_and_a_v0(api: Api) -> None:
    secret = "whsec_" + "x" * 32
    src = api.create_source("stripe", secret=secret)
    body = stripe_body()
    good = sign_stripe(secret, body)["Stripe-Signature"]
    ts, v1 = good.split(",")
    header = f"{ts},v1={'0' * 64},{v1},v0={'1' * 64},v9=zzz"
    assert api.webhook(src["id"], body, {"Stripe-Signature": header}).status_code == 202
    # v0 alone never counts, even when it carries the right HMAC.
    body2 = stripe_body()
    mac = sign_stripe(secret, body2)["Stripe-Signature"].split(",")[1].split("=")[1]
    v0 = {"Stripe-Signature": f"{ts},v0={mac}"}
    assert_problem(api.webhook(src["id"], body2, v0), 401)
    assert api.stored(src["id"]) == 1


# --------------------------------------------------------------------------- outcomes


def test_duplicate_delivery_answers_the_first_id(api: Api) -> None:
    src = api.create_source("standard")
    body = dumps(deal_created())
    msg_id = uid("msg")
    first = api.webhook(src["id"], body, sign_standard(src["secret"], msg_id, body))
    assert first.status_code == 202
    again = api.webhook(src["id"], body, sign_standard(src["secret"], msg_id, body))
    assert again.status_code == 200, again.text
    assert again.json() == {"event_id": first.json()["event_id"], "status": "duplicate"}
    # Same delivery id, different body: still the first one.
    other = dumps(deal_created())
    third = api.webhook(src["id"], other, sign_standard(src["secret"], msg_id, other))
    assert third.json() == {"event_id": first.json()["event_id"], "status": "duplicate"}
    assert api.stored(src["id"]) == 1


def test_concurrent_duplicates_store_one(api: Api) -> None:
    src = api.create_source("hmac")
    body = dumps(deal_created())
    headers = sign_hmac(src["secret"], body, uid("e"))
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: api.webhook(src["id"], body, headers), range(32)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 31 + [202]
    assert len({a.json()["event_id"] for a in answers}) == 1
    assert api.stored(src["id"]) == 1


def test_duplicate_stripe_event_id_from_the_body(api: Api) -> None:
    secret = "whsec_" + "d" * 32
    src = api.create_source("stripe", secret=secret)
    body = stripe_body()
    first = api.webhook(src["id"], body, sign_stripe(secret, body))
    again = api.webhook(src["id"], body, sign_stripe(secret, body))
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["event_id"] == first.json()["event_id"]


def test_same_delivery_id_on_two_sources_is_two_events(api: Api) -> None:
    a, b = api.create_source("hmac"), api.create_source("hmac")
    body = dumps(deal_created())
    event_id = uid("e")
    ra = api.webhook(a["id"], body, sign_hmac(a["secret"], body, event_id))
    rb = api.webhook(b["id"], body, sign_hmac(b["secret"], body, event_id))
    assert (ra.status_code, rb.status_code) == (202, 202)
    assert ra.json()["event_id"] != rb.json()["event_id"]


def test_github_without_a_mapping_is_ignored(api: Api) -> None:
    src = api.create_source("github")
    body = dumps({"zen": "Keep it logically awesome.", "hook_id": 1})
    resp = api.webhook(src["id"], body, sign_github(src["secret"], body, uid("gh"), "ping"))
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["status"] == "ignored"
    event = api.event(out["event_id"])
    assert event["status"] == "ignored" and event["type"] == "ping"


def test_type_the_mapping_does_not_list_is_ignored(api: Api) -> None:
    mapping = {
        "events": {
            "invoice.paid": {
                "type": "deal.updated",
                "data": {"deal_id": "body.data.object.metadata.deal_id"},
            }
        }
    }
    secret = "whsec_" + "m" * 32
    src = api.create_source("stripe", secret=secret, mapping=mapping)
    body = dumps({"id": uid("evt"), "type": "customer.created", "data": {"object": {}}})
    resp = api.webhook(src["id"], body, sign_stripe(secret, body))
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "ignored"
    # A repeat of an ignored delivery is a duplicate of it.
    again = api.webhook(src["id"], body, sign_stripe(secret, body))
    assert again.json() == {"event_id": resp.json()["event_id"], "status": "duplicate"}


def test_unknown_native_type_is_ignored(api: Api) -> None:
    src = api.create_source("hmac")
    body = dumps(native("deal.archived", deal_id="d1"))
    resp = api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid("e")))
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "ignored"
    assert api.event(resp.json()["event_id"])["status"] == "ignored"


def test_stripe_invoice_paid_with_a_mapping(api: Api) -> None:
    mapping = {
        "events": {
            "invoice.paid": {
                "type": "deal.updated",
                "data": {
                    "deal_id": "body.data.object.metadata.deal_id",
                    "fields": {"paid": "`true`", "invoice": "body.data.object.id"},
                },
            }
        }
    }
    secret = "whsec_" + "i" * 32
    src = api.create_source("stripe", secret=secret, mapping=mapping)
    body = dumps(
        {
            "id": uid("evt"),
            "object": "event",
            "type": "invoice.paid",
            "data": {"object": {"id": "in_123", "metadata": {"deal_id": "deal-42"}}},
        }
    )
    resp = api.webhook(src["id"], body, sign_stripe(secret, body))
    assert resp.status_code == 202, resp.text
    event = api.event(resp.json()["event_id"])
    assert event["type"] == "deal.updated"
    assert event["deal_id"] == "deal-42"
    assert event["status"] == "accepted"


def test_mapping_producing_an_invalid_event_is_422(api: Api) -> None:
    mapping = {
        "events": {
            "invoice.paid": {
                "type": "deal.updated",
                "data": {"deal_id": "body.data.object.metadata.deal_id", "value": "`-5`"},
            }
        }
    }
    secret = "whsec_" + "j" * 32
    src = api.create_source("stripe", secret=secret, mapping=mapping)
    body = dumps({"id": uid("evt"), "type": "invoice.paid", "data": {"object": {"metadata": {}}}})
    problem = assert_problem(api.webhook(src["id"], body, sign_stripe(secret, body)), 422)
    fields = {e["loc"][-1] for e in problem["errors"]}
    assert {"deal_id", "value"} <= fields
    assert api.stored(src["id"]) == 0


def test_standard_rotation_header_with_several_signatures(api: Api) -> None:
    src = api.create_source("standard")
    body = dumps(deal_created())
    headers = sign_standard(src["secret"], uid("msg"), body)
    headers["webhook-signature"] = (
        "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= "
        + headers["webhook-signature"]
        + " v1a,ignored"
    )
    assert api.webhook(src["id"], body, headers).status_code == 202


@pytest.mark.parametrize(
    "media", ["application/json; charset=utf-8", "application/cloudevents+json"]
)
def test_json_media_types_accepted(api: Api, media: str) -> None:
    src = api.create_source("hmac")
    body = dumps(deal_created())
    resp = api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid()), content_type=media)
    assert resp.status_code == 202, resp.text


def test_stored_event_keeps_raw_body_headers_and_hash(api: Api) -> None:
    import hashlib

    from sqlalchemy import text

    src = api.create_source("hmac")
    body = dumps(deal_created())
    headers = sign_hmac(src["secret"], body, uid("e"))
    resp = api.webhook(src["id"], body, headers)
    with api.db.engine.connect() as conn:
        row = conn.execute(
            text("SELECT raw_body, headers, body_sha256 FROM events WHERE id = :i"),
            {"i": resp.json()["event_id"]},
        ).one()
    assert bytes(row[0]) == body
    assert row[2] == hashlib.sha256(body).hexdigest()
    kept = row[1] if isinstance(row[1], dict) else json.loads(row[1])
    assert kept["x-event-id"] == headers["X-Event-Id"]
    assert "x-signature" not in kept  # signatures are not kept


def test_metrics_count_outcomes(api: Api) -> None:
    src = api.create_source("hmac")
    body = dumps(deal_created())
    api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid()))
    api.webhook(src["id"], body, {"X-Signature": "0" * 64, "X-Event-Id": uid()})
    text_ = api.http.get("/metrics").text
    assert (
        f'dealflow_webhooks_received_total{{outcome="accepted",source="{src["id"]}"}} 1.0' in text_
    )
    assert (
        f'dealflow_webhooks_received_total{{outcome="unauthorized",source="{src["id"]}"}} 1.0'
        in text_
    )
    assert "dealflow_webhook_ack_seconds_bucket" in text_
    assert "dealflow_events_pending_handoff" in text_


def test_secret_never_logged(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    src = api.create_source("standard")
    body = dumps(deal_created())
    api.webhook(src["id"], body, sign_standard(src["secret"], uid(), body))
    api.webhook(src["id"], body, sign_standard(src["secret"], uid(), b"x"))
    time.sleep(0.1)
    # The ingress's own log lines for both (their fields are what the JSON log prints) ...
    mine = [r for r in caplog.records if getattr(r, "source", None) == src["id"]]
    assert [r.outcome for r in mine] == ["accepted", "unauthorized"]  # type: ignore[attr-defined]
    # ... and no line at all (message or field) holds the secret or the body.
    logged = caplog.text + " ".join(str(vars(r)) for r in caplog.records)
    assert src["secret"] not in logged
    assert src["secret"].removeprefix("whsec_") not in logged
    assert "Big deal" not in logged
