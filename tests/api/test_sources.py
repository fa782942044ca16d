"""``/v1/sources``: secrets shown once, generated or brought, rotated with an overlap, encrypted
at rest; enabling and disabling."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.api.conftest import (
    Api,
    assert_problem,
    deal_created,
    dumps,
    sign_github,
    sign_hmac,
    sign_standard,
    sign_stripe,
    uid,
)


def test_generated_standard_secret(api: Api) -> None:
    src = api.create_source("standard")
    assert src["secret"].startswith("whsec_")
    assert len(base64.b64decode(src["secret"][6:], validate=True)) == 32
    assert src["ingress_url"] == f"{api.base_url}/v1/webhooks/{src['id']}"
    assert src["enabled"] is True and src["scheme"] == "standard"


@pytest.mark.parametrize("scheme", ["github", "hmac", "stripe"])
def test_generated_secrets_of_other_schemes(api: Api, scheme: str) -> None:
    src = api.create_source(scheme)
    assert len(src["secret"]) >= 32
    if scheme == "stripe":
        assert src["secret"].startswith("whsec_")


def test_secret_is_shown_once(api: Api) -> None:
    src = api.create_source("standard")
    shown = api.admin("GET", f"/v1/sources/{src['id']}")
    assert shown.status_code == 200
    assert "secret" not in shown.json()
    assert src["secret"] not in shown.text
    listed = api.admin("GET", "/v1/sources")
    assert listed.status_code == 200
    assert src["secret"] not in listed.text
    assert any(s["id"] == src["id"] for s in listed.json())


def test_secrets_encrypted_at_rest(api: Api) -> None:
    secret = "whsec_" + "plaintext" * 4
    src = api.create_source("stripe", secret=secret)
    api.admin("POST", f"/v1/sources/{src['id']}/rotate-secret")
    with api.db.engine.connect() as conn:
        row = (
            conn.execute(text("SELECT * FROM sources WHERE id = :i"), {"i": src["id"]})
            .mappings()
            .one()
        )
    dump = repr(dict(row))
    assert "plaintext" not in dump
    assert row["secret_enc"] and row["previous_secret_enc"]
    assert row["secret_enc"] != row["previous_secret_enc"]


def test_brought_stripe_secret_verifies(api: Api) -> None:
    secret = "whsec_" + "brought" * 5
    src = api.create_source("stripe", secret=secret)
    assert src["secret"] == secret
    body = dumps({"id": uid("evt"), **deal_created()})
    assert api.webhook(src["id"], body, sign_stripe(secret, body)).status_code == 202


@pytest.mark.parametrize(
    ("scheme", "secret"),
    [
        ("standard", "not-whsec-prefixed-secret"),
        ("standard", "whsec_%%%notbase64%%%"),
        ("standard", "whsec_" + base64.b64encode(b"short").decode()),
        ("stripe", "sk_live_notasigningsecret"),
        ("hmac", "short"),
        ("github", " padded-secret-with-spaces "),
    ],
)
def test_bad_brought_secret(api: Api, scheme: str, secret: str) -> None:
    resp = api.admin("POST", "/v1/sources", json={"name": "x", "scheme": scheme, "secret": secret})
    problem = assert_problem(resp, 422)
    assert problem["errors"][0]["loc"] == ["body", "secret"]
    assert secret not in resp.text  # the problem does not echo the secret


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "scheme": "svix"},
        {"name": "", "scheme": "hmac"},
        {"name": "x", "scheme": "hmac", "ip_allowlist": ["10.0.0.300/8"]},
        {"name": "x", "scheme": "hmac", "rate_limit": {"per_second": 0, "burst": 1}},
        {"name": "x", "scheme": "hmac", "tolerance": "five minutes"},
        {"name": "x", "scheme": "hmac", "mapping": {"events": {}}},
        {"name": "x", "scheme": "hmac", "surprise": 1},
    ],
)
def test_invalid_source(api: Api, body: dict) -> None:
    problem = assert_problem(api.admin("POST", "/v1/sources", json=body), 422)
    assert problem["errors"]


def test_sources_need_an_admin_key(api: Api) -> None:
    assert_problem(api.http.post("/v1/sources", json={"name": "x", "scheme": "hmac"}), 401)
    assert_problem(api.http.get("/v1/sources"), 401)
    resp = api.admin("POST", "/v1/api-keys", json={"name": "v", "role": "viewer", "subject": "v"})
    assert resp.status_code == 201, resp.text
    viewer = {"Authorization": f"Bearer {resp.json()['key']}"}
    assert_problem(api.http.get("/v1/sources", headers=viewer), 403)


def test_unknown_source_crud(api: Api) -> None:
    assert_problem(api.admin("GET", "/v1/sources/src_nope"), 404)
    assert_problem(api.admin("PATCH", "/v1/sources/src_nope", json={"enabled": False}), 404)
    assert_problem(api.admin("POST", "/v1/sources/src_nope/rotate-secret"), 404)


def test_rotation_both_secrets_verify_until_the_end_of_the_overlap(api: Api) -> None:
    src = api.create_source("standard")
    old = src["secret"]
    resp = api.admin("POST", f"/v1/sources/{src['id']}/rotate-secret")
    assert resp.status_code == 200, resp.text
    rotated = resp.json()
    new = rotated["secret"]
    assert new != old and new.startswith("whsec_")
    until = datetime.fromisoformat(rotated["previous_valid_until"])
    assert timedelta(hours=23) < until - datetime.now(UTC) <= timedelta(hours=24)
    for secret in (old, new):
        body = dumps(deal_created())
        resp = api.webhook(src["id"], body, sign_standard(secret, uid(), body))
        assert resp.status_code == 202, resp.text
    # A Standard Webhooks sender mid-rotation sends both signatures in one header.
    body = dumps(deal_created())
    a, b = sign_standard(old, "m1", body), sign_standard(new, "m1", body)
    both = {**a, "webhook-signature": f"{a['webhook-signature']} {b['webhook-signature']}"}
    assert api.webhook(src["id"], body, both).status_code == 202


def test_old_secret_refused_after_the_overlap(api: Api) -> None:
    src = api.create_source("hmac")
    old = src["secret"]
    resp = api.admin("POST", f"/v1/sources/{src['id']}/rotate-secret", json={"overlap": "PT1S"})
    assert resp.status_code == 200, resp.text
    new = resp.json()["secret"]
    until = datetime.fromisoformat(resp.json()["previous_valid_until"])
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.2)
    body = dumps(deal_created())
    assert_problem(api.webhook(src["id"], body, sign_hmac(old, body, uid())), 401)
    assert api.webhook(src["id"], body, sign_hmac(new, body, uid())).status_code == 202


def test_rotate_to_a_brought_secret(api: Api) -> None:
    src = api.create_source("stripe", secret="whsec_" + "first" * 5)
    second = "whsec_" + "second" * 5
    resp = api.admin("POST", f"/v1/sources/{src['id']}/rotate-secret", json={"secret": second})
    assert resp.status_code == 200 and resp.json()["secret"] == second
    body = dumps({"id": uid("evt"), **deal_created()})
    assert api.webhook(src["id"], body, sign_stripe(second, body)).status_code == 202
    bad = api.admin("POST", f"/v1/sources/{src['id']}/rotate-secret", json={"secret": "nope"})
    assert_problem(bad, 422)


def test_patch_disable_and_enable(api: Api) -> None:
    src = api.create_source("github")
    resp = api.admin("PATCH", f"/v1/sources/{src['id']}", json={"enabled": False})
    assert resp.status_code == 200 and resp.json()["enabled"] is False
    body = dumps({"zen": "hi"})
    headers = sign_github(src["secret"], body, uid(), "ping")
    assert_problem(api.webhook(src["id"], body, headers), 403)
    resp = api.admin("PATCH", f"/v1/sources/{src['id']}", json={"enabled": True, "name": "again"})
    assert resp.json()["enabled"] is True and resp.json()["name"] == "again"
    assert api.webhook(src["id"], body, headers).status_code == 200  # ignored, not refused


def test_patch_fields(api: Api) -> None:
    src = api.create_source("hmac")
    resp = api.admin(
        "PATCH",
        f"/v1/sources/{src['id']}",
        json={
            "ip_allowlist": ["192.0.2.0/24", "::ffff:10.1.2.3"],
            "rate_limit": {"per_second": 5, "burst": 10},
            "tolerance": "PT1M",
        },
    )
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["ip_allowlist"] == ["192.0.2.0/24", "10.1.2.3/32"]
    assert out["rate_limit"] == {"per_second": 5, "burst": 10}
    assert out["tolerance"] == "PT1M"
    body = dumps(deal_created())
    assert_problem(api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 403)
    bad = api.admin("PATCH", f"/v1/sources/{src['id']}", json={"secret": "x" * 20})
    assert_problem(bad, 422)
