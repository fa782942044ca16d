"""Every row of the contract's webhook table, and the hostile inputs of issue 3: each gets its
documented status with a problem document, never a 5xx (but the deliberate 503), and none is
stored."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from store.db import Database
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
from tests.conftest import free_port

STRIPE_SECRET = "whsec_" + "b" * 32
MIB = 1024 * 1024


def refused(api: Api, src: dict, resp: httpx.Response, status: int) -> dict:
    body = assert_problem(resp, status)
    assert api.stored(src["id"]) == 0
    return body


# --------------------------------------------------------------------------- 401


@pytest.mark.parametrize("scheme", ["standard", "github", "stripe", "hmac"])
def test_missing_signature(api: Api, scheme: str) -> None:
    src = api.create_source(scheme, **({"secret": STRIPE_SECRET} if scheme == "stripe" else {}))
    body = dumps({"id": uid(), **deal_created()})
    ids = {
        "standard": {"webhook-id": uid(), "webhook-timestamp": str(int(time.time()))},
        "github": {"X-GitHub-Delivery": uid(), "X-GitHub-Event": "issues"},
        "stripe": {},
        "hmac": {"X-Event-Id": uid()},
    }[scheme]
    problem = refused(api, src, api.webhook(src["id"], body, ids), 401)
    assert "missing" in problem["detail"]


def test_wrong_secret(api: Api) -> None:
    src = api.create_source("standard")
    other = api.create_source("standard")
    body = dumps(deal_created())
    refused(
        api, src, api.webhook(src["id"], body, sign_standard(other["secret"], uid(), body)), 401
    )


@pytest.mark.parametrize("offset", [-301, 301, -86400 * 365, 86400 * 365 * 50])
def test_stale_or_future_timestamp_standard(api: Api, offset: int) -> None:
    src = api.create_source("standard")
    body = dumps(deal_created())
    ts = int(time.time()) + offset
    resp = api.webhook(src["id"], body, sign_standard(src["secret"], uid(), body, ts=ts))
    problem = refused(api, src, resp, 401)
    assert ("future" if offset > 0 else "old") in problem["detail"]


@pytest.mark.parametrize("offset", [-400, 400])
def test_stale_or_future_timestamp_stripe(api: Api, offset: int) -> None:
    src = api.create_source("stripe", secret=STRIPE_SECRET)
    body = dumps({"id": uid(), **deal_created()})
    resp = api.webhook(
        src["id"], body, sign_stripe(STRIPE_SECRET, body, ts=int(time.time()) + offset)
    )
    refused(api, src, resp, 401)


def test_per_source_tolerance(api: Api) -> None:
    src = api.create_source("standard", tolerance="PT30S")
    body = dumps(deal_created())
    ts = int(time.time()) - 120  # inside the default 5 min, outside this source's 30 s
    refused(
        api, src, api.webhook(src["id"], body, sign_standard(src["secret"], uid(), body, ts)), 401
    )


def signed_for(src: dict, scheme: str, body: bytes) -> dict[str, str]:
    if scheme == "standard":
        return sign_standard(src["secret"], uid(), body)
    if scheme == "github":
        return sign_github(src["secret"], body, uid(), "issues")
    if scheme == "stripe":
        return sign_stripe(STRIPE_SECRET, body)
    return sign_hmac(src["secret"], body, uid())


@pytest.mark.parametrize("scheme", ["standard", "github", "stripe", "hmac"])
def test_truncated_signature(api: Api, scheme: str) -> None:
    secret = {"secret": STRIPE_SECRET} if scheme == "stripe" else {}
    src = api.create_source(scheme, **secret)
    body = dumps({"id": uid(), **deal_created()})
    headers = signed_for(src, scheme, body)
    name = next(k for k in headers if "sig" in k.lower())
    headers[name] = headers[name][:-8]
    refused(api, src, api.webhook(src["id"], body, headers), 401)


def test_upper_case_hex(api: Api) -> None:
    src = api.create_source("hmac")
    body = dumps(deal_created())
    headers = sign_hmac(src["secret"], body, uid())
    headers["X-Signature"] = headers["X-Signature"].upper()
    refused(api, src, api.webhook(src["id"], body, headers), 401)
    gh = api.create_source("github")
    headers = sign_github(gh["secret"], body, uid(), "issues")
    headers["X-Hub-Signature-256"] = "sha256=" + headers["X-Hub-Signature-256"][7:].upper()
    refused(api, gh, api.webhook(gh["id"], body, headers), 401)
    st = api.create_source("stripe", secret=STRIPE_SECRET)
    body = dumps({"id": uid(), **deal_created()})
    ts, v1 = sign_stripe(STRIPE_SECRET, body)["Stripe-Signature"].split(",")
    refused(api, st, api.webhook(st["id"], body, {"Stripe-Signature": f"{ts},{v1.upper()}"}), 401)


def test_re_serialised_body(api: Api) -> None:
    src = api.create_source("standard")
    payload = deal_created()
    signed = json.dumps(payload).encode()  # with spaces, as the sender serialised it
    sent = dumps(payload)  # the same JSON, compact: not the signed bytes
    assert signed != sent and json.loads(signed) == json.loads(sent)
    resp = api.webhook(src["id"], sent, sign_standard(src["secret"], uid(), signed))
    refused(api, src, resp, 401)


def test_duplicated_signature_headers(api: Api) -> None:
    src = api.create_source("standard")
    body = dumps(deal_created())
    good = sign_standard(src["secret"], uid(), body)
    pairs = [*good.items(), ("webhook-signature", "v1,Zm9yZ2Vk")]
    refused(api, src, api.webhook(src["id"], body, pairs), 401)
    gh = api.create_source("github")
    good = sign_github(gh["secret"], body, uid(), "issues")
    pairs = [*good.items(), ("X-Hub-Signature-256", good["X-Hub-Signature-256"])]
    refused(api, gh, api.webhook(gh["id"], body, pairs), 401)


def test_duplicated_id_or_timestamp_headers(api: Api) -> None:
    src = api.create_source("standard")
    body = dumps(deal_created())
    good = sign_standard(src["secret"], uid(), body)
    pairs = [*good.items(), ("webhook-id", uid())]
    refused(api, src, api.webhook(src["id"], body, pairs), 401)
    pairs = [*good.items(), ("webhook-timestamp", good["webhook-timestamp"])]
    refused(api, src, api.webhook(src["id"], body, pairs), 401)


def test_duplicated_hmac_event_id_header(api: Api) -> None:
    src = api.create_source("hmac")
    body = dumps(deal_created())
    good = sign_hmac(src["secret"], body, uid())
    pairs = [*good.items(), ("X-Event-Id", uid())]
    resp = api.webhook(src["id"], body, pairs)
    assert resp.status_code in (400, 401, 422), resp.text
    refused(api, src, resp, resp.status_code)


def test_garbage_signature_headers(api: Api) -> None:
    src = api.create_source("standard")
    body = dumps(deal_created())
    for sig in ["", "v1,", "v1,%%%", "v2," + "A" * 44, ",,,", "v1," + "A" * 10_000]:
        headers = {
            "webhook-id": uid(),
            "webhook-timestamp": str(int(time.time())),
            "webhook-signature": sig,
        }
        refused(api, src, api.webhook(src["id"], body, headers), 401)
    for ts in ["abc", "1e9", "-5", "١٢٣", str(10**30)]:
        headers = sign_standard(src["secret"], uid(), body)
        headers["webhook-timestamp"] = ts
        resp = api.webhook(src["id"], body, [(k, v.encode()) for k, v in headers.items()])
        refused(api, src, resp, 401)


def test_stripe_header_garbage(api: Api) -> None:
    src = api.create_source("stripe", secret=STRIPE_SECRET)
    body = dumps({"id": uid(), **deal_created()})
    now = int(time.time())
    for header in [
        "",
        "t=",
        f"t={now}",
        f"v1={'a' * 64}",
        f"t={now},t={now},v1={'a' * 64}",
        "garbage",
        f"t=abc,v1={'a' * 64}",
    ]:
        refused(api, src, api.webhook(src["id"], body, {"Stripe-Signature": header}), 401)


# --------------------------------------------------------------------------- 403


def test_allowlist(api: Api) -> None:
    src = api.create_source("hmac", ip_allowlist=["10.0.0.0/8", "2001:db8::/32"])
    body = dumps(deal_created())
    problem = refused(
        api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 403
    )
    assert "127.0.0.1" in problem["detail"]
    ok = api.create_source("hmac", ip_allowlist=["127.0.0.1/32"])
    assert api.webhook(ok["id"], body, sign_hmac(ok["secret"], body, uid())).status_code == 202


def test_ipv4_mapped_ipv6_allowlist_entry(api: Api) -> None:
    src = api.create_source("hmac", ip_allowlist=["::ffff:127.0.0.1/128"])
    body = dumps(deal_created())
    resp = api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid()))
    assert resp.status_code == 202, resp.text


def test_forwarded_for_from_an_untrusted_peer_is_ignored(api: Api) -> None:
    src = api.create_source("hmac", ip_allowlist=["203.0.113.0/24"])
    body = dumps(deal_created())
    headers = {**sign_hmac(src["secret"], body, uid()), "X-Forwarded-For": "203.0.113.7"}
    refused(api, src, api.webhook(src["id"], body, headers), 403)


def test_forwarded_for_from_a_trusted_proxy(api: Api, proxy_client: httpx.Client) -> None:
    src = api.create_source("hmac", ip_allowlist=["203.0.113.0/24"])
    body = dumps(deal_created())
    headers = {**sign_hmac(src["secret"], body, uid()), "X-Forwarded-For": "203.0.113.7"}
    resp = api.webhook(src["id"], body, headers, client=proxy_client)
    assert resp.status_code == 202, resp.text
    # A spoofed left-most entry does not help: the right-most untrusted hop is the caller.
    spoof = {
        **sign_hmac(src["secret"], body, uid()),
        "X-Forwarded-For": "203.0.113.7, 198.51.100.9",
    }
    assert_problem(api.webhook(src["id"], body, spoof, client=proxy_client), 403)
    # Hops through further trusted proxies are skipped; repeated headers are read in order.
    pairs = [
        *sign_hmac(src["secret"], body, uid()).items(),
        ("X-Forwarded-For", "198.51.100.9, 203.0.113.8"),
        ("X-Forwarded-For", "127.0.0.2"),
    ]
    assert api.webhook(src["id"], body, pairs, client=proxy_client).status_code == 202
    # Garbage in the header does not crash anything.
    junk = {**sign_hmac(src["secret"], body, uid()), "X-Forwarded-For": "not-an-ip, ,,"}
    assert_problem(api.webhook(src["id"], body, junk, client=proxy_client), 403)
    assert api.stored(src["id"]) == 2


def test_disabled_source(api: Api) -> None:
    src = api.create_source("hmac")
    resp = api.admin("PATCH", f"/v1/sources/{src['id']}", json={"enabled": False})
    assert resp.status_code == 200 and resp.json()["enabled"] is False
    body = dumps(deal_created())
    problem = refused(
        api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 403
    )
    assert "disabled" in problem["detail"]
    api.admin("PATCH", f"/v1/sources/{src['id']}", json={"enabled": True})
    assert api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())).status_code == 202


def test_blocked_after_a_burst_of_auth_failures(api: Api) -> None:
    src = api.create_source("hmac")
    body = dumps(deal_created())
    limit = api.settings.auth_failure_limit
    for _ in range(limit):
        bad = {"X-Signature": "0" * 64, "X-Event-Id": uid()}
        assert_problem(api.webhook(src["id"], body, bad), 401)
    # Now even a good signature is refused: the source is blocked.
    problem = refused(
        api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 403
    )
    assert "blocked" in problem["detail"]
    shown = api.admin("GET", f"/v1/sources/{src['id']}").json()
    assert shown["blocked_until"] is not None
    metrics = api.http.get("/metrics").text
    assert f'dealflow_sources_blocked_total{{source="{src["id"]}"}} 1.0' in metrics
    # Other sources are not affected.
    other = api.create_source("hmac")
    assert (
        api.webhook(other["id"], body, sign_hmac(other["secret"], body, uid())).status_code == 202
    )


# --------------------------------------------------------------------------- 404, 405


def test_unknown_source(api: Api) -> None:
    body = dumps(deal_created())
    for source_id in ["src_nope", "x" * 500, "../../etc/passwd", "%00"]:
        resp = api.webhook(source_id, body, sign_hmac("whatever-secret-123", body, uid()))
        assert resp.status_code == 404, (source_id, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")


def test_get_on_the_ingress(api: Api) -> None:
    src = api.create_source("hmac")
    for method in ("GET", "PUT", "DELETE"):
        resp = api.http.request(method, f"/v1/webhooks/{src['id']}")
        assert_problem(resp, 405)
        assert "POST" in resp.headers.get("allow", "")
    assert api.stored(src["id"]) == 0


# --------------------------------------------------------------------------- 413


def test_content_length_over_the_limit(api: Api) -> None:
    src = api.create_source("hmac")
    body = b'{"type":"deal.created","data":{"pad":"' + b"x" * MIB + b'"}}'
    refused(api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 413)


def test_declared_content_length_over_the_limit_refused_before_the_body(api: Api) -> None:
    """A client that announces 10 MiB and sends nothing more gets its 413 straight away."""
    import socket

    src = api.create_source("hmac")
    host, port = api.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/webhooks/{src['id']} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nX-Signature: {'0' * 64}\r\n"
            f"Content-Length: {10 * MIB}\r\n\r\n{{".encode()
        )
        head = sock.recv(65536).decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head[:200]
    assert "application/problem+json" in head
    assert api.stored(src["id"]) == 0


def test_chunked_body_over_the_limit(api: Api) -> None:
    src = api.create_source("hmac")

    def chunks() -> Iterator[bytes]:
        yield b'{"type":"deal.created","data":{"pad":"'
        for _ in range(80):
            yield b"x" * 16384
        yield b'"}}'

    headers = {"X-Signature": "0" * 64, "X-Event-Id": uid(), "Content-Type": "application/json"}
    resp = api.http.post(f"/v1/webhooks/{src['id']}", content=chunks(), headers=headers)
    assert "content-length" not in resp.request.headers
    assert resp.request.headers["transfer-encoding"] == "chunked"
    refused(api, src, resp, 413)


def test_bad_content_length(api: Api) -> None:
    import socket

    src = api.create_source("hmac")
    host, port = api.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/webhooks/{src['id']} HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/json\r\nContent-Length: -1\r\n\r\n".encode()
        )
        head = sock.recv(65536).decode("latin-1")
    assert head.startswith("HTTP/1.1 4"), head[:200]
    assert api.stored(src["id"]) == 0


# --------------------------------------------------------------------------- 415


@pytest.mark.parametrize(
    "ctype",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "application/jsonx",
        "json",
    ],
)
def test_not_json(api: Api, ctype: str | None) -> None:
    src = api.create_source("hmac")
    body = dumps(deal_created())
    resp = api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid()), content_type=ctype)
    refused(api, src, resp, 415)


# --------------------------------------------------------------------------- 422


def test_schema_errors_name_the_fields(api: Api) -> None:
    src = api.create_source("hmac")
    body = dumps(native("deal.created", deal_id="d1", title="x", value=-1, currency="usd"))
    problem = refused(
        api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 422
    )
    locs = {tuple(e["loc"]) for e in problem["errors"]}
    assert ("body", "data", "pipeline_id") in locs
    assert ("body", "data", "value") in locs
    assert ("body", "data", "currency") in locs
    assert "pipeline_id" in problem["detail"]


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "deal.created",
        {"data": {}},
        {"type": 5, "data": {}},
        {"type": "deal.created"},
        {"type": "deal.created", "data": []},
        {"type": "deal.updated", "data": {"deal_id": "d", "unknown": 1}},
        {"type": "deal.activity", "data": {"deal_id": "d", "kind": "call", "at": "yesterday"}},
        {"type": "deal.stage_change_requested", "data": {"deal_id": ""}},
    ],
)
def test_envelope_shapes(api: Api, payload: object) -> None:
    src = api.create_source("hmac")
    body = dumps(payload)
    refused(api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 422)


def test_deep_json(api: Api) -> None:
    src = api.create_source("hmac")
    body = b"[" * 50_000 + b"]" * 50_000
    problem = refused(
        api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 422
    )
    assert "deeper" in problem["detail"]
    body = b'{"type":"deal.created","data":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001
    refused(api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 422)


def test_invalid_utf8(api: Api) -> None:
    src = api.create_source("hmac")
    body = dumps(deal_created()).replace(b"Big deal", b"Big \xff\xfe deal")
    refused(api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 422)
    body = dumps(deal_created()).replace(b"Big deal", b"\xed\xa0\x80")  # a lone surrogate
    refused(api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 422)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_nan_and_infinity(api: Api, literal: bytes) -> None:
    src = api.create_source("hmac")
    body = dumps(deal_created()).replace(b"1200", literal)
    refused(api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 422)


@pytest.mark.parametrize(
    "body", [b"", b"{", b"null", b"\xef\xbb\xbf{}", b'{"a":1}{"b":2}', b"{'a': 1}"]
)
def test_not_parseable(api: Api, body: bytes) -> None:
    src = api.create_source("hmac")
    refused(api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 422)


def test_missing_or_oversized_delivery_id(api: Api) -> None:
    src = api.create_source("hmac")
    body = dumps(deal_created())
    headers = sign_hmac(src["secret"], body, uid())
    del headers["X-Event-Id"]
    problem = refused(api, src, api.webhook(src["id"], body, headers), 422)
    assert problem["errors"][0]["loc"] == ["header", "X-Event-Id header"]
    refused(api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, "x" * 300)), 422)
    st = api.create_source("stripe", secret=STRIPE_SECRET)
    body = dumps(deal_created())  # no "id": Stripe's delivery id is missing
    refused(api, st, api.webhook(st["id"], body, sign_stripe(STRIPE_SECRET, body)), 422)


def test_huge_mapped_value_does_not_break_storage(api: Api) -> None:
    src = api.create_source("hmac")
    body = dumps(deal_created(deal_id="d" * 201))
    refused(api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 422)


# --------------------------------------------------------------------------- 429


def test_source_rate_limit(api: Api) -> None:
    src = api.create_source("hmac", rate_limit={"per_second": 0.5, "burst": 2})
    body = dumps(deal_created())
    answers = [
        api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())) for _ in range(4)
    ]
    assert [a.status_code for a in answers[:2]] == [202, 202]
    for resp in answers[2:]:
        assert_problem(resp, 429)
        assert int(resp.headers["retry-after"]) >= 1
    assert api.stored(src["id"]) == 2


# --------------------------------------------------------------------------- 503


@pytest.fixture
def broken_store(api: Api) -> Iterator[None]:
    """The event writer's database is gone (nothing listens where it points)."""
    writer = api.ctx.writer
    healthy = writer.db
    broken = Database(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/gone")
    writer.db = broken
    try:
        yield
    finally:
        writer.db = healthy
        broken.dispose()


def test_store_down_is_503(api: Api, broken_store: None) -> None:
    src = api.create_source("hmac")
    body = dumps(deal_created())
    resp = api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid()))
    refused(api, src, resp, 503)
    assert int(resp.headers["retry-after"]) >= 1


def test_source_lookup_failing_is_503(api: Api) -> None:
    src = api.create_source("hmac")
    cache = api.ctx.sources
    healthy = cache.db
    broken = Database(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/gone")
    cache.forget(src["id"])
    cache.db = broken
    try:
        body = dumps(deal_created())
        resp = api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid()))
        assert_problem(resp, 503)
        assert "retry-after" in resp.headers
    finally:
        cache.db = healthy
        broken.dispose()
    assert api.stored(src["id"]) == 0


# --------------------------------------------------------------------------- a hostile mix


def test_no_5xx_for_a_barrage(api: Api) -> None:
    """A mix of everything above at once, concurrently: only 4xx, nothing stored."""
    from concurrent.futures import ThreadPoolExecutor

    src = api.create_source("standard")
    now = int(time.time())
    cases: list[tuple[bytes, list[tuple[str, str]], str | None]] = []
    good = dumps(deal_created())
    for i in range(200):
        body = [b"[" * 5000, b"\xff", b"NaN", good, b"", b'{"type":"deal.created"}'][i % 6]
        headers = sign_standard(src["secret"], uid(), good + b" ", ts=now - (i % 3) * 1000)
        ctype = ["application/json", "text/plain", None][i % 3]
        cases.append((body, list(headers.items()), ctype))
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda c: api.webhook(src["id"], c[0], c[1], content_type=c[2]), cases)
        )
    for resp in answers:
        assert 400 <= resp.status_code < 500, resp.text
        assert resp.headers["content-type"].startswith("application/problem+json")
    assert api.stored(src["id"]) == 0


def test_nul_and_control_characters_in_ids(api: Api) -> None:
    """PostgreSQL text cannot hold NUL: such ids are refused up front (422), not a 5xx."""
    st = api.create_source("stripe", secret=STRIPE_SECRET)
    body = dumps({"id": "evt_\u0000x", **deal_created()})
    refused(api, st, api.webhook(st["id"], body, sign_stripe(STRIPE_SECRET, body)), 422)
    src = api.create_source("hmac")
    body = dumps(deal_created(deal_id="deal\u0000x"))
    refused(api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 422)
    body = dumps(native("deal.\u0000", deal_id="d"))
    resp = api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid()))
    assert resp.status_code in (200, 422), resp.text


def test_nul_in_payload_text_is_stored_or_refused_never_5xx(api: Api) -> None:
    src = api.create_source("hmac")
    body = dumps(native("deal.updated", deal_id=uid(), title="a\u0000b", fields={"k\u0000": 1}))
    resp = api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid()))
    assert resp.status_code in (202, 422), resp.text


def test_a_poison_event_does_not_fail_its_batch(api: Api) -> None:
    """Concurrent good requests sharing a group commit with bad ones are still accepted."""
    from concurrent.futures import ThreadPoolExecutor

    src = api.create_source("hmac")

    def send(i: int) -> httpx.Response:
        # Bad (even i): a NUL in the deal id, or in the title (PostgreSQL text cannot hold it).
        deal = "deal\u0000x" if i % 4 == 0 else uid()
        title = "t\u0000" if i % 4 == 2 else "t"
        body = dumps(native("deal.updated", deal_id=deal, title=title))
        return api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid()))

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, range(64)))
    for i, resp in enumerate(answers):
        assert resp.status_code == (202 if i % 2 else 422), resp.text
    assert api.stored(src["id"]) == 32


# --------------------------------------------------------------------------- request bodies


def _locs(problem: dict) -> set[tuple]:
    return {tuple(e["loc"]) for e in problem.get("errors", [])}


@pytest.mark.parametrize("field", ["name", "enabled", "ip_allowlist"])
def test_patch_source_explicit_null_is_refused_and_nothing_written(api: Api, field: str) -> None:
    src = api.create_source("hmac", ip_allowlist=["10.0.0.0/8"])
    problem = assert_problem(
        api.admin("PATCH", f"/v1/sources/{src['id']}", json={field: None}), 422
    )
    assert ("body", field) in _locs(problem), problem
    assert field in problem["detail"]
    shown = api.admin("GET", f"/v1/sources/{src['id']}")
    assert shown.status_code == 200, shown.text
    assert shown.json()[field] == src[field]
    assert api.admin("GET", "/v1/sources").status_code == 200
    body = dumps(deal_created())
    sent = api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid()))
    assert sent.status_code == 403, sent.text  # the allowlist still holds (not cleared)


def test_patch_source_null_clears_what_may_be_cleared(api: Api) -> None:
    src = api.create_source("hmac", tolerance="PT10M", rate_limit={"per_second": 5, "burst": 10})
    resp = api.admin(
        "PATCH",
        f"/v1/sources/{src['id']}",
        json={"tolerance": None, "rate_limit": None, "mapping": None},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["tolerance"] is None and resp.json()["rate_limit"] is None


HUGE = ["P99999999999D", "PT99999999999999999999S", "P3000000D", "P1" + "0" * 400 + "D"]


@pytest.mark.parametrize("huge", HUGE)
def test_huge_durations_of_sources_are_422(api: Api, huge: str) -> None:
    created = api.admin(
        "POST", "/v1/sources", json={"name": "s", "scheme": "hmac", "tolerance": huge}
    )
    problem = assert_problem(created, 422)
    assert ("body", "tolerance") in _locs(problem), problem
    assert "100 years" in dumps(problem).decode()
    src = api.create_source("hmac")
    patched = api.admin("PATCH", f"/v1/sources/{src['id']}", json={"tolerance": huge})
    assert ("body", "tolerance") in _locs(assert_problem(patched, 422))
    rotated = api.admin("POST", f"/v1/sources/{src['id']}/rotate-secret", json={"overlap": huge})
    assert ("body", "overlap") in _locs(assert_problem(rotated, 422))
    shown = api.admin("GET", f"/v1/sources/{src['id']}").json()
    assert shown["tolerance"] is None and shown["previous_valid_until"] is None


def test_longest_duration_is_accepted(api: Api) -> None:
    src = api.create_source("hmac", tolerance="P36525D")
    assert src["tolerance"] == "P36525D"


def _pipeline_body(**stage: object) -> dict:
    return {
        "name": f"p {uid()}",
        "type": "sales",
        "currency": "USD",
        "probability_mode": "stage",
        "stages": [
            {"key": "lead", "name": "Lead", "probability": 10, **stage},
            {"key": "won", "name": "Won", "probability": 100, "outcome": "won"},
        ],
    }


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (_pipeline_body(rotting="P3000000D"), ("stages", 0, "rotting")),
        (_pipeline_body(rotting="P99999999999D"), ("stages", 0, "rotting")),
        (_pipeline_body(sla={"target": "P3000000D"}), ("stages", 0, "sla", "target")),
        (
            _pipeline_body(approval={"approvers": ["a"], "timeout": "P3000000D"}),
            ("stages", 0, "approval", "timeout"),
        ),
        (
            {
                **_pipeline_body(),
                "automations": [
                    {
                        "name": "late",
                        "trigger": {"on": "time_in_stage", "stage": "lead", "after": "P3000000D"},
                        "actions": [{"do": "move_to_stage", "stage": "won"}],
                    }
                ],
            },
            ("automations", 0, "trigger", "after"),
        ),
    ],
)
def test_huge_durations_of_pipelines_are_422(api: Api, body: dict, loc: tuple) -> None:
    problem = assert_problem(api.admin("POST", "/v1/pipelines", json=body), 422)
    assert any(tuple(e["loc"])[-len(loc) :] == loc for e in problem["errors"]), problem
    assert "100 years" in dumps(problem).decode()


@pytest.mark.parametrize(
    ("script", "loc"),
    [
        ({"steps": [{"do": "wait", "for": "P3000000D"}]}, ("steps", 0, "for")),
        (
            {"start_at": "9999-12-31T23:59:59Z", "steps": [{"do": "wait", "for": "P1D"}]},
            ("start_at",),
        ),
        ({"steps": [{"do": "wait", "for": "P36525D"}] * 100}, ("steps", 69, "for")),
        (
            {"steps": [{"do": "activity", "kind": "call", "after": "P36525D"}] * 100},
            ("steps", 69, "after"),
        ),
        ({"steps": [{"do": "activity", "at": "9500-01-01T00:00:00Z"}]}, ("steps", 0, "at")),
        ({"start_at": "0001-01-01T00:00:00Z"}, ("start_at",)),
    ],
)
def test_simulation_clock_out_of_range_is_422(api: Api, script: dict, loc: tuple) -> None:
    pipeline = api.create_pipeline()
    resp = api.admin("POST", f"/v1/pipelines/{pipeline}/simulate", json=script)
    problem = assert_problem(resp, 422)
    assert any(tuple(e["loc"])[-len(loc) :] == loc for e in problem["errors"]), problem


def test_bulk_replay_refuses_unknown_fields(api: Api) -> None:
    problem = assert_problem(api.admin("POST", "/v1/dead-letters/replay", json={"bogus": 1}), 422)
    assert ("body", "bogus") in _locs(problem), problem
    assert "bogus" in problem["detail"]


def test_snooze_needs_an_offset(api: Api) -> None:
    resp = api.admin("POST", f"/v1/deals/{uid()}/snooze", json={"until": "2027-01-01T00:00:00"})
    problem = assert_problem(resp, 422)
    assert ("body", "until") in _locs(problem), problem


def test_deal_ids_that_no_url_can_carry_are_422(api: Api) -> None:
    src = api.create_source("hmac")
    for deal_id in ["a/b", "../x", "..", ".", "/"]:
        body = dumps(deal_created(deal_id=deal_id))
        problem = refused(
            api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 422
        )
        assert ("body", "data", "deal_id") in _locs(problem), (deal_id, problem)
    for event in [
        native("deal.updated", deal_id="a/b", title="t"),
        native("deal.activity", deal_id="..", kind="call"),
    ]:
        body = dumps(event)
        refused(api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 422)
    body = dumps(deal_created(deal_id="a.b"))
    assert api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())).status_code == 202


@pytest.mark.parametrize("char", ["\u0000", "\u0007", "\u001b"])
def test_control_characters_in_names_are_422(api: Api, char: str) -> None:
    bad = f"a{char}b"
    for path, body, loc in [
        ("/v1/api-keys", {"name": bad, "role": "viewer", "subject": "s"}, ("body", "name")),
        ("/v1/api-keys", {"name": "n", "role": "viewer", "subject": bad}, ("body", "subject")),
        ("/v1/sources", {"name": bad, "scheme": "hmac"}, ("body", "name")),
        (
            "/v1/approvals/apr_x/decision",
            {"decision": "approve", "comment": bad},
            ("body", "comment"),
        ),
        ("/v1/dead-letters/replay", {"error_contains": bad}, ("body", "error_contains")),
        ("/v1/dead-letters/evt_x/discard", {"reason": bad}, ("body", "reason")),
        (f"/v1/deals/{uid()}/transitions", {"to_stage": bad}, ("body", "to_stage")),
    ]:
        problem = assert_problem(api.admin("POST", path, json=body), 422)
        assert loc in _locs(problem), (path, problem)
        assert "control characters" in dumps(problem).decode()
    src = api.create_source("hmac")
    patched = api.admin("PATCH", f"/v1/sources/{src['id']}", json={"name": bad})
    assert ("body", "name") in _locs(assert_problem(patched, 422))
    assert api.admin("GET", f"/v1/sources/{src['id']}").json()["name"] == src["name"]


def test_tab_and_newline_are_text(api: Api) -> None:
    resp = api.admin(
        "POST",
        "/v1/api-keys",
        json={"name": "two\nlines\tand a tab", "role": "viewer", "subject": "s"},
    )
    assert resp.status_code == 201, resp.text


def test_control_characters_in_native_events_are_422(api: Api) -> None:
    """Refused at the ingress: on PostgreSQL the worker could never write such a deal."""
    src = api.create_source("hmac")
    pipeline_id = api.create_pipeline()
    base = deal_created(pipeline_id=pipeline_id)["data"]
    cases = [
        (native("deal.created", **{**base, "title": "a\u0000b"}), "title"),
        (native("deal.created", **{**base, "owner": "o\u0000"}), "owner"),
        (native("deal.created", **{**base, "owner": "o" * 201}), "owner"),
        (native("deal.created", **{**base, "fields": {"a": {"b": ["x\u0000"]}}}), "fields"),
        (native("deal.created", **{**base, "fields": {"k\u0000": 1}}), "fields"),
        (native("deal.created", **{**base, "pipeline_id": "p\u0007"}), "pipeline_id"),
        (native("deal.updated", deal_id=uid(), title="t\u0000"), "title"),
        (native("deal.updated", deal_id=uid(), fields={"a": "\u0000"}), "fields"),
        (native("deal.activity", deal_id=uid(), kind="c\u0000"), "kind"),
        (native("deal.stage_change_requested", deal_id=uid(), to_stage="w\u0000"), "to_stage"),
        (
            native("deal.stage_change_requested", deal_id=uid(), to_stage="w", actor="\u0000"),
            "actor",
        ),
    ]
    for event, field in cases:
        body = dumps(event)
        problem = refused(
            api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 422
        )
        assert ("body", "data", field) in _locs(problem), (event, problem)
    ok = native("deal.created", **{**base, "title": "line\nline", "fields": {"a": "\u0007"}})
    body = dumps(ok)
    assert api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())).status_code == 202


def test_activity_time_needs_an_offset(api: Api) -> None:
    src = api.create_source("hmac")
    body = dumps(native("deal.activity", deal_id=uid(), kind="call", at="2027-01-01T00:00:00"))
    problem = refused(
        api, src, api.webhook(src["id"], body, sign_hmac(src["secret"], body, uid())), 422
    )
    assert ("body", "data", "at") in _locs(problem), problem


def test_mapping_test_needs_an_admin_key(api: Api) -> None:
    src = api.create_source("hmac")
    for role in ("viewer", "approver"):
        key = api.admin(
            "POST", "/v1/api-keys", json={"name": role, "role": role, "subject": uid()}
        ).json()["key"]
        for body in ({"payload": deal_created()}, {"payload": {}, "mapping": {"version": 1}}):
            resp = api.http.post(
                f"/v1/sources/{src['id']}/mapping:test",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
            )
            assert_problem(resp, 403)


def test_if_none_match_star_and_weak_tags_are_304(api: Api) -> None:
    from tests.api.conftest import insert_deal

    deal_id = uid("deal")
    insert_deal(api.db, deal_id)
    first = api.admin("GET", f"/v1/deals/{deal_id}")
    assert first.status_code == 200, first.text
    etag = first.headers["ETag"]
    for header in [etag, "*", f"W/{etag}", f'"other", W/{etag}', f'"x" ,{etag}']:
        resp = api.admin("GET", f"/v1/deals/{deal_id}", headers={"If-None-Match": header})
        assert resp.status_code == 304, (header, resp.status_code)
        assert resp.headers["ETag"] == etag
    for header in ['"other"', 'W/"other"', ""]:
        resp = api.admin("GET", f"/v1/deals/{deal_id}", headers={"If-None-Match": header})
        assert resp.status_code == 200, (header, resp.status_code)
    missing = api.admin("GET", f"/v1/deals/{uid()}", headers={"If-None-Match": "*"})
    assert_problem(missing, 404)
