"""Source mappings: foreign payloads become native events (JMESPath), validated when saved,
tried with ``mapping:test``, with schema versions side by side and unknown versions refused."""

from __future__ import annotations

import uuid
from typing import Any

from tests.api.conftest import Api, assert_problem, dumps, native, sign_github, sign_hmac, uid

CRM_MAPPING = {
    "type": "body.event",
    "version": "body.schema",
    "events": {
        "deal.saved": {
            "versions": {
                "1": {
                    "type": "deal.created",
                    "data": {
                        "deal_id": "body.deal.id",
                        "pipeline_id": "'pl_crm'",
                        "title": "body.deal.name",
                        "value": "body.deal.amount",
                        "currency": "body.deal.currency",
                    },
                },
                "2": {
                    "type": "deal.created",
                    "data": {
                        "deal_id": "body.payload.deal.key",
                        "pipeline_id": "'pl_crm'",
                        "title": "body.payload.deal.title",
                        "value": "body.payload.deal.value.amount",
                        "currency": "body.payload.deal.value.currency",
                        "owner": "body.payload.deal.owner.email",
                    },
                },
            }
        }
    },
}


def test_crm_v1_and_v2_side_by_side_and_an_unknown_version_refused(api: Api) -> None:
    src = api.create_source("hmac", mapping=CRM_MAPPING)
    v1 = dumps(
        {
            "event": "deal.saved",
            "schema": "1",
            "deal": {"id": uid("crm"), "name": "Old shape", "amount": 10, "currency": "EUR"},
        }
    )
    v2_deal = uid("crm")
    v2 = dumps(
        {
            "event": "deal.saved",
            "schema": 2,
            "payload": {
                "deal": {
                    "key": v2_deal,
                    "title": "New shape",
                    "value": {"amount": 25.5, "currency": "USD"},
                    "owner": {"email": "ana@example.com"},
                }
            },
        }
    )
    for body in (v1, v2):
        event_id = uid("e")
        resp = api.webhook(src["id"], body, sign_hmac(src["secret"], body, event_id))
        assert resp.status_code == 202, resp.text
        stored = api.event(resp.json()["event_id"])
        assert stored["type"] == "deal.created"
    assert stored["deal_id"] == v2_deal
    v3 = dumps({"event": "deal.saved", "schema": "3", "payload": {}})
    before = api.stored(src["id"])
    resp = api.webhook(src["id"], v3, sign_hmac(src["secret"], v3, uid("e")))
    problem = assert_problem(resp, 422)
    assert "version '3'" in problem["detail"] and "1, 2" in problem["detail"]
    assert api.stored(src["id"]) == before


def test_github_issues_and_a_form_post(api: Api) -> None:
    mapping = {
        "events": {
            "issues": {
                "type": "deal.activity",
                "data": {
                    "deal_id": "body.issue.title",
                    "kind": "join('', ['github.', body.action])",
                },
            }
        }
    }
    src = api.create_source("github", mapping=mapping)
    deal = uid("gh")
    body = dumps({"action": "opened", "issue": {"title": deal, "number": 7}})
    resp = api.webhook(
        src["id"], body, sign_github(src["secret"], body, str(uuid.uuid4()), "issues")
    )
    assert resp.status_code == 202, resp.text
    assert api.event(resp.json()["event_id"])["deal_id"] == deal
    ping = dumps({"zen": "Keep it logically awesome."})
    resp = api.webhook(src["id"], ping, sign_github(src["secret"], ping, str(uuid.uuid4()), "ping"))
    assert resp.status_code == 200 and resp.json()["status"] == "ignored"

    form = api.create_source(
        "hmac",
        mapping={
            "type": "'form.submitted'",
            "events": {
                "form.submitted": {
                    "type": "deal.created",
                    "data": {
                        "deal_id": "body.email",
                        "pipeline_id": "'pl_forms'",
                        "title": "join(' ', [body.first_name, body.last_name])",
                        "value": "`0`",
                        "currency": "'EUR'",
                        "fields": {"company": "body.company", "source": "'web form'"},
                    },
                }
            },
        },
    )
    post = dumps(
        {
            "email": f"{uid('lead')}@example.com",
            "first_name": "Ana",
            "last_name": "Li",
            "company": "ACME",
        }
    )
    resp = api.webhook(form["id"], post, sign_hmac(form["secret"], post, uid("f")))
    assert resp.status_code == 202, resp.text


def test_a_bad_mapping_is_refused_when_saved_listing_every_problem(api: Api) -> None:
    resp = api.admin(
        "POST",
        "/v1/sources",
        json={
            "name": "bad",
            "scheme": "hmac",
            "mapping": {
                "type": "body.[",
                "events": {
                    "a": {"type": "deal.exploded", "data": {"deal_id": "body.id"}},
                    "b": {"type": "deal.updated", "data": {"title": "body.t"}},
                    "c": {"versions": {"1": {"type": "deal.updated", "data": {"deal_id": "x"}}}},
                },
            },
        },
    )
    problem = assert_problem(resp, 422)
    locs = [tuple(e["loc"]) for e in problem["errors"]]
    assert ("body", "mapping", "type") in locs
    assert ("body", "mapping", "events", "a", "type") in locs
    assert ("body", "mapping", "events", "b", "data") in locs
    assert ("body", "mapping", "version") in locs  # versions need a version expression


def test_mapping_test_shows_the_native_event_and_stores_nothing(api: Api) -> None:
    src = api.create_source("hmac", mapping=CRM_MAPPING)
    sample = {
        "event": "deal.saved",
        "schema": "1",
        "deal": {"id": "crm-9", "name": "Sample", "amount": 5, "currency": "EUR"},
    }
    resp = api.admin("POST", f"/v1/sources/{src['id']}/mapping:test", json={"payload": sample})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["status"] == "mapped" and out["foreign_type"] == "deal.saved"
    assert out["event"] == {
        "type": "deal.created",
        "data": {
            "deal_id": "crm-9",
            "pipeline_id": "pl_crm",
            "title": "Sample",
            "value": 5.0,
            "currency": "EUR",
            "fields": {},
        },
    }
    unmapped = api.admin(
        "POST", f"/v1/sources/{src['id']}/mapping:test", json={"payload": {"event": "x.y"}}
    )
    assert unmapped.json()["status"] == "ignored"
    bad = api.admin(
        "POST",
        f"/v1/sources/{src['id']}/mapping:test",
        json={"payload": {**sample, "deal": {"id": "crm-9", "amount": -1}}},
    )
    problem = assert_problem(bad, 422)
    assert {tuple(e["loc"])[-1] for e in problem["errors"]} >= {"title", "value", "currency"}
    assert api.stored(src["id"]) == 0
    viewer = api.admin(
        "POST", "/v1/api-keys", json={"name": "v", "role": "viewer", "subject": "v"}
    ).json()["key"]
    denied = api.http.post(
        f"/v1/sources/{src['id']}/mapping:test",
        json={"payload": sample},
        headers={"Authorization": f"Bearer {viewer}"},
    )
    assert_problem(denied, 403)


def test_a_reference_must_name_one_deal_clearly(api: Api) -> None:
    """422s naming what is wrong, at the ingress and when a mapping is saved."""
    src = api.create_source("hmac")

    def send(body: dict[str, Any]) -> dict[str, Any]:
        raw = dumps(body)
        return assert_problem(
            api.webhook(src["id"], raw, sign_hmac(src["secret"], raw, uid())), 422
        )

    both = send(native("deal.activity", deal_id="d1", deal_ref={"by": "crm", "id": "7"}, kind="x"))
    assert "exactly one of 'deal_id' and 'deal_ref'" in dumps(both).decode()
    neither = send(native("deal.updated", fields={"a": 1}))
    assert "exactly one of 'deal_id' and 'deal_ref'" in dumps(neither).decode()
    bad = send(native("deal.updated", deal_ref={"by": "Stripe Customer", "id": ""}))
    locs = {tuple(e["loc"]) for e in bad["errors"]}
    assert ("body", "data", "deal_ref", "by") in locs and ("body", "data", "deal_ref", "id") in locs
    created_bad = send(
        native(
            "deal.created",
            deal_id="d2",
            pipeline_id="p",
            title="t",
            value=1,
            currency="USD",
            external_ids={"hubspot": "x\u0000y"},
        )
    )
    assert any(
        e["loc"][:4] == ["body", "data", "external_ids", "hubspot"] for e in created_bad["errors"]
    )

    resp = api.admin(
        "POST",
        "/v1/sources",
        json={
            "name": "no deal",
            "scheme": "hmac",
            "mapping": {"events": {"x": {"type": "deal.updated", "data": {"fields": {}}}}},
        },
    )
    problem = assert_problem(resp, 422)
    assert "'deal_ref'" in problem["errors"][0]["msg"]
