"""Webhook signature verification, checked against signatures made by independent code.

Requests are signed with the ``standardwebhooks`` reference library, the ``stripe`` library,
GitHub's documented example and plain ``hmac`` - never with ``domain.signatures.sign`` (which is
itself checked against those independent signers below).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime

import httpx
import pytest
import stripe
from standardwebhooks.webhooks import Webhook
from starlette.datastructures import Headers as StarletteHeaders

from domain.signatures import (
    SCHEMES,
    SignatureError,
    Verified,
    generate_secret,
    sign,
    stripe_ids,
    validate_secret,
    verify,
)

NOW = 1_700_000_000
TOLERANCE = 300.0

STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
STANDARD_OLD_SECRET = "whsec_" + base64.b64encode(b"the previous secret, 32 bytes!!!").decode()
STRIPE_SECRET = "whsec_test_b6e4f1c2d3a4958677aa0e1f2b3c4d5e"
STRIPE_OLD_SECRET = "whsec_old_0a1b2c3d4e5f60718293a4b5c6d7e8f9"
PLAIN_SECRET = "s3cr3t-for-plain-hmac-senders"
PLAIN_OLD_SECRET = "the-previous-plain-hmac-secret"

SECRETS = {
    "standard": (STANDARD_SECRET, STANDARD_OLD_SECRET),
    "github": (PLAIN_SECRET, PLAIN_OLD_SECRET),
    "stripe": (STRIPE_SECRET, STRIPE_OLD_SECRET),
    "hmac": (PLAIN_SECRET, PLAIN_OLD_SECRET),
}

BODY = json.dumps(
    {
        "id": "evt_1NqZ",
        "type": "deal.created",
        "data": {"deal_id": "d-1", "pipeline_id": "p-1", "title": "Ünïcode ✓", "value": 10},
    },
    separators=(",", ":"),
    ensure_ascii=False,
).encode()

SIGNATURE_HEADER = {
    "standard": "webhook-signature",
    "github": "X-Hub-Signature-256",
    "stripe": "Stripe-Signature",
    "hmac": "X-Signature",
}


# --------------------------------------------------------------------------- independent signers


def standard_sig(secret: str, msg_id: str, ts: int, body: bytes) -> str:
    return Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body)


def stripe_header(secret: str, ts: int, body: bytes) -> str:
    return stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp=ts)


def stripe_v1(secret: str, ts: int, body: bytes) -> str:
    return stripe.WebhookSignature._compute_signature(f"{ts}.{body.decode()}", secret)


def hex_hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed(
    scheme: str, secret: str | None = None, body: bytes = BODY, ts: int = NOW
) -> dict[str, str]:
    """Headers for ``body`` as the real sender would make them (independent code)."""
    secret = secret or SECRETS[scheme][0]
    if scheme == "standard":
        return {
            "webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
            "webhook-timestamp": str(ts),
            "webhook-signature": standard_sig(secret, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", ts, body),
        }
    if scheme == "github":
        return {
            "X-Hub-Signature-256": "sha256=" + hex_hmac(secret, body),
            "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "X-GitHub-Event": "pull_request",
        }
    if scheme == "stripe":
        return {"Stripe-Signature": stripe_header(secret, ts, body)}
    return {"X-Signature": hex_hmac(secret, body), "X-Event-Id": "evt-42"}


def check(scheme: str, headers, body: bytes = BODY, secrets=None, now: float = NOW) -> Verified:
    secrets = list(SECRETS[scheme][:1]) if secrets is None else secrets
    return verify(scheme, secrets, headers, body, tolerance_s=TOLERANCE, now=now)


def rejected(scheme: str, headers, body: bytes = BODY, secrets=None, now: float = NOW) -> str:
    with pytest.raises(SignatureError) as info:
        check(scheme, headers, body, secrets, now)
    reason = info.value.reason
    assert reason and str(info.value) == reason
    return reason


def other_char(c: str) -> str:
    return "b" if c == "a" else "a"


def replace_at(text: str, i: int) -> str:
    return text[:i] + other_char(text[i]) + text[i + 1 :]


# --------------------------------------------------------------------------- accepted requests


@pytest.mark.parametrize("scheme", SCHEMES)
def test_independently_signed_request_is_accepted(scheme):
    result = check(scheme, signed(scheme))
    expected = {
        "standard": Verified("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", None, NOW),
        "github": Verified("72d3162e-cc78-11e3-81ab-4c9367dc0958", "pull_request", None),
        "stripe": Verified(None, None, NOW),
        "hmac": Verified("evt-42", None, None),
    }[scheme]
    assert result == expected


def test_github_documented_example():
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
    secret = "It's a Secret to Everybody"
    headers = {
        "X-Hub-Signature-256": (
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        ),
        "X-GitHub-Delivery": "d-1",
        "X-GitHub-Event": "ping",
    }
    result = verify("github", [secret], headers, b"Hello, World!", tolerance_s=300, now=NOW)
    assert result == Verified("d-1", "ping", None)
    with pytest.raises(SignatureError):
        verify("github", [secret], headers, b"Hello, World?", tolerance_s=300, now=NOW)


def test_standard_secret_without_prefix_is_accepted():
    headers = signed("standard")
    check("standard", headers, secrets=[STANDARD_SECRET.removeprefix("whsec_")])


def test_standard_unpadded_secret_is_accepted():
    secret = "whsec_" + base64.b64encode(b"x" * 32).decode().rstrip("=")
    assert not secret.endswith("=")
    check("standard", signed("standard", secret), secrets=[secret])


@pytest.mark.parametrize("scheme", ["standard", "github", "hmac"])
def test_non_utf8_body_verifies_byte_for_byte(scheme):
    body = b'{"a": "\xff\xfe"}'
    check(scheme, signed(scheme, body=body), body=body)


def test_hmac_accepts_sha256_prefix():
    headers = {"X-Signature": "sha256=" + hex_hmac(PLAIN_SECRET, BODY)}
    assert check("hmac", headers) == Verified(None, None, None)


@pytest.mark.parametrize("scheme", ["github", "hmac"])
def test_missing_delivery_id_is_not_a_signature_error(scheme):
    headers = signed(scheme)
    headers.pop("X-GitHub-Delivery" if scheme == "github" else "X-Event-Id")
    headers.pop("X-GitHub-Event", None)
    assert check(scheme, headers) == Verified(None, None, None)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_header_names_are_case_insensitive(scheme):
    headers = signed(scheme)
    check(scheme, {k.upper(): v for k, v in headers.items()})
    check(scheme, {k.lower(): v for k, v in headers.items()})


def header_variants(headers: dict[str, str]):
    pairs = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return {
        "dict": dict(headers),
        "starlette": StarletteHeaders(raw=pairs),
        "httpx": httpx.Headers(headers),
        "asgi_pairs": pairs,
        "dict_of_lists": {k: [v] for k, v in headers.items()},
    }


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("kind", ["dict", "starlette", "httpx", "asgi_pairs", "dict_of_lists"])
def test_header_containers(scheme, kind):
    headers = signed(scheme)
    check(scheme, header_variants(headers)[kind])


# --------------------------------------------------------------------------- one byte altered


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_one_byte_change_of_the_body_fails(scheme):
    headers = signed(scheme)
    check(scheme, headers)
    for i in range(len(BODY)):
        tampered = BODY[:i] + bytes([BODY[i] ^ 0x01]) + BODY[i + 1 :]
        rejected(scheme, headers, body=tampered)
    rejected(scheme, headers, body=BODY + b" ")
    rejected(scheme, headers, body=BODY[:-1])
    rejected(scheme, headers, body=b"")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_one_character_change_of_the_signature_header_fails(scheme):
    headers = signed(scheme)
    name = SIGNATURE_HEADER[scheme]
    value = headers[name]
    for i in range(len(value)):
        rejected(scheme, {**headers, name: replace_at(value, i)})


def test_standard_signed_id_cannot_be_changed():
    headers = signed("standard")
    msg_id = headers["webhook-id"]
    for i in range(len(msg_id)):
        assert rejected("standard", {**headers, "webhook-id": replace_at(msg_id, i)}) == (
            "no signature matched"
        )


def test_standard_signed_timestamp_cannot_be_changed():
    # Only the last digits keep the timestamp within tolerance: that is the signature failing.
    headers = signed("standard")
    ts = headers["webhook-timestamp"]
    for i in range(len(ts)):
        changed = ts[:i] + str((int(ts[i]) + 1) % 10) + ts[i + 1 :]
        reason = rejected("standard", {**headers, "webhook-timestamp": changed})
        if abs(int(changed) - NOW) <= TOLERANCE:
            assert reason == "no signature matched"


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("scheme", SCHEMES)
def test_truncated_signature_fails(scheme):
    headers = signed(scheme)
    name = SIGNATURE_HEADER[scheme]
    for cut in (1, 2, 10, len(headers[name]) // 2):
        rejected(scheme, {**headers, name: headers[name][:-cut]})


@pytest.mark.parametrize("scheme", ["github", "stripe", "hmac"])
def test_upper_case_hex_fails(scheme):
    headers = signed(scheme)
    name = SIGNATURE_HEADER[scheme]
    if scheme == "stripe":
        t, v1 = headers[name].split(",")
        upper = f"{t},{v1[:3]}{v1[3:].upper()}"
    elif scheme == "github":
        upper = "sha256=" + headers[name].removeprefix("sha256=").upper()
    else:
        upper = headers[name].upper()
    assert upper != headers[name]
    rejected(scheme, {**headers, name: upper})


def test_hmac_upper_case_hex_with_prefix_fails():
    mac = hex_hmac(PLAIN_SECRET, BODY)
    rejected("hmac", {"X-Signature": "sha256=" + mac.upper()})
    rejected("hmac", {"X-Signature": "SHA256=" + mac})


def test_github_needs_the_sha256_prefix():
    reason = rejected("github", {"X-Hub-Signature-256": hex_hmac(PLAIN_SECRET, BODY)})
    assert "sha256=" in reason
    # The legacy SHA-1 header alone is not enough.
    sha1 = hmac.new(PLAIN_SECRET.encode(), BODY, hashlib.sha1).hexdigest()
    assert "missing" in rejected("github", {"X-Hub-Signature": "sha1=" + sha1})


@pytest.mark.parametrize("scheme", SCHEMES)
def test_reserialised_body_fails(scheme):
    headers = signed(scheme)
    parsed = json.loads(BODY)
    for body in (
        json.dumps(parsed).encode(),  # ", " / ": " separators
        json.dumps(parsed, indent=2).encode(),
        json.dumps(parsed, separators=(",", ":")).encode(),  # ASCII-escaped unicode
        json.dumps(parsed, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode(),
    ):
        assert body != BODY
        rejected(scheme, headers, body=body)


@pytest.mark.parametrize("scheme", ["standard", "stripe"])
def test_timestamp_tolerance_both_ways(scheme):
    # Within tolerance either side, and exactly at the edge, is fine.
    for ts in (NOW - 300, NOW - 299, NOW + 299, NOW + 300):
        check(scheme, signed(scheme, ts=ts))
    stale = rejected(scheme, signed(scheme, ts=NOW - 301))
    assert "too old" in stale and "300 s tolerance" in stale
    future = rejected(scheme, signed(scheme, ts=NOW + 301))
    assert "future" in future and "300 s tolerance" in future
    # A request from long ago, properly signed, is a replay.
    rejected(scheme, signed(scheme, ts=NOW - 86_400))
    # The same request is fine when "now" is its own time: now is an input, not the clock.
    check(scheme, signed(scheme, ts=NOW - 86_400), now=NOW - 86_400 + 0.5)


def test_tolerance_is_configurable():
    headers = signed("standard", ts=NOW - 3600)
    verify("standard", [STANDARD_SECRET], headers, BODY, tolerance_s=3600, now=NOW)
    with pytest.raises(SignatureError, match="outside the 60 s tolerance"):
        verify("standard", [STANDARD_SECRET], headers, BODY, tolerance_s=60, now=NOW)
    with pytest.raises(ValueError):
        verify("standard", [STANDARD_SECRET], headers, BODY, tolerance_s=-1, now=NOW)


ARABIC_INDIC_TIMESTAMP = "\u0661\u0667" + "\u0660" * 8  # str.isdigit() is True for these


@pytest.mark.parametrize(
    "bad", ["", "abc", "1.5e9", "1700000000.5", "-1700000000", ARABIC_INDIC_TIMESTAMP]
)
def test_malformed_timestamps_fail(bad):
    headers = signed("standard")
    rejected("standard", {**headers, "webhook-timestamp": bad})
    sig = stripe_v1(STRIPE_SECRET, NOW, BODY)
    rejected("stripe", {"Stripe-Signature": f"t={bad},v1={sig}"})


@pytest.mark.parametrize(
    ("scheme", "missing", "reason"),
    [
        ("standard", "webhook-id", "missing webhook-id header"),
        ("standard", "webhook-timestamp", "missing webhook-timestamp header"),
        ("standard", "webhook-signature", "missing webhook-signature header"),
        ("github", "X-Hub-Signature-256", "missing X-Hub-Signature-256 header"),
        ("stripe", "Stripe-Signature", "missing Stripe-Signature header"),
        ("hmac", "X-Signature", "missing X-Signature header"),
    ],
)
def test_missing_headers(scheme, missing, reason):
    headers = signed(scheme)
    del headers[missing]
    assert rejected(scheme, headers) == reason
    assert rejected(scheme, {**headers, missing: "  "}) == reason
    assert rejected(scheme, {}).startswith("missing ")


def test_no_headers_or_body_at_all():
    for scheme in SCHEMES:
        rejected(scheme, {}, body=b"")


# --------------------------------------------------------------------------- duplicated headers


DUPLICABLE = {
    "standard": ["webhook-id", "webhook-timestamp", "webhook-signature"],
    "github": ["X-Hub-Signature-256", "X-GitHub-Delivery", "X-GitHub-Event"],
    "stripe": ["Stripe-Signature"],
    "hmac": ["X-Signature", "X-Event-Id"],
}


def duplicated_variants(headers: dict[str, str], name: str, second: str):
    pairs = [(k.lower(), v) for k, v in headers.items()] + [(name.lower(), second)]
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]
    return [
        StarletteHeaders(raw=raw),
        httpx.Headers(pairs),
        raw,
        pairs,
        {**headers, name.upper(): second},
        {**headers, name: [headers[name], second]},
    ]


@pytest.mark.parametrize(
    ("scheme", "name"), [(s, n) for s, names in DUPLICABLE.items() for n in names]
)
def test_duplicated_header_fails(scheme, name):
    headers = signed(scheme)
    # Even the identical, valid value sent twice is refused.
    for variant in duplicated_variants(headers, name, headers[name]):
        assert rejected(scheme, variant) == f"duplicated {name} header"


def test_duplicated_signature_with_one_valid_value_fails():
    headers = signed("hmac")
    for variant in duplicated_variants(headers, "X-Signature", "0" * 64):
        assert rejected("hmac", variant) == "duplicated X-Signature header"


def test_stripe_duplicated_timestamp_inside_the_header_fails():
    sig = stripe_v1(STRIPE_SECRET, NOW, BODY)
    reason = rejected("stripe", {"Stripe-Signature": f"t={NOW},t={NOW + 1},v1={sig}"})
    assert "duplicated t=" in reason


def test_proxy_merged_hmac_signature_fails():
    # A proxy that folds two X-Signature headers into one ("a, b") makes it malformed.
    mac = hex_hmac(PLAIN_SECRET, BODY)
    rejected("hmac", {"X-Signature": f"{mac}, {mac}"})


# --------------------------------------------------------------------------- Stripe specifics


def test_stripe_v0_only_fails_even_when_it_is_a_correct_hmac():
    v0 = stripe_v1(STRIPE_SECRET, NOW, BODY)  # a v0 value that would match if v0 counted
    reason = rejected("stripe", {"Stripe-Signature": f"t={NOW},v0={v0}"})
    assert "v0 is not accepted" in reason


def test_stripe_two_v1_one_matching():
    good = stripe_v1(STRIPE_SECRET, NOW, BODY)
    other = stripe_v1("whsec_some_other_endpoint_secret", NOW, BODY)
    for header in (
        f"t={NOW},v1={other},v1={good}",
        f"t={NOW},v1={good},v1={other}",
        f"t={NOW},v1={other},v1={good},v0={other}",
        f"v1={good},t={NOW}",
        f"t={NOW}, v1={good}",
    ):
        assert check("stripe", {"Stripe-Signature": header}) == Verified(None, None, NOW)
    rejected("stripe", {"Stripe-Signature": f"t={NOW},v1={other},v1={other}"})


def test_stripe_unknown_schemes_are_ignored():
    good = stripe_v1(STRIPE_SECRET, NOW, BODY)
    check("stripe", {"Stripe-Signature": f"t={NOW},v9={good},v1={good},x"})
    reason = rejected("stripe", {"Stripe-Signature": f"t={NOW},v2={good}"})
    assert "no v1 signature" in reason


def test_stripe_missing_timestamp():
    good = stripe_v1(STRIPE_SECRET, NOW, BODY)
    assert "missing t=" in rejected("stripe", {"Stripe-Signature": f"v1={good}"})


def test_stripe_secret_is_used_with_its_prefix():
    headers = signed("stripe")
    rejected("stripe", headers, secrets=[STRIPE_SECRET.removeprefix("whsec_")])


def test_stripe_ids():
    assert stripe_ids({"id": "evt_1", "type": "invoice.paid", "object": "event"}) == (
        "evt_1",
        "invoice.paid",
    )
    assert stripe_ids({}) == (None, None)
    assert stripe_ids({"id": 5, "type": ""}) == (None, None)
    assert stripe_ids([1, 2]) == (None, None)
    assert stripe_ids(None) == (None, None)


# --------------------------------------------------------------------------- Standard specifics


def test_standard_multiple_signatures_and_unknown_versions():
    headers = signed("standard")
    good = headers["webhook-signature"]
    good_b64 = good.removeprefix("v1,")
    wrong = standard_sig(STANDARD_OLD_SECRET, headers["webhook-id"], NOW, BODY)
    for value in (
        f"v1a,{good_b64} {good}",
        f"{wrong} {good}",
        f"{good} {wrong}",
        f"v1a,Zm9vYmFy {wrong} v2,{good_b64} {good}",
        f"{wrong}  {good}",
    ):
        check("standard", {**headers, "webhook-signature": value})
    for value in (
        f"v1a,{good_b64}",
        f"v2,{good_b64}",
        f"V1,{good_b64}",
        good_b64,
        f"v1a,{good_b64} v2,{good_b64}",
        f"{wrong} v1,not-base64!",
    ):
        rejected("standard", {**headers, "webhook-signature": value})


def test_standard_only_unknown_versions_says_so():
    headers = signed("standard")
    b64 = headers["webhook-signature"].removeprefix("v1,")
    reason = rejected("standard", {**headers, "webhook-signature": f"v1a,{b64}"})
    assert reason == "no v1 signature in the webhook-signature header"


def test_standard_non_canonical_base64_fails():
    # Base64 of 32 bytes has 2 unused bits in its last character; changing them decodes to the
    # same bytes, but the signature as sent must be exactly the canonical one.
    headers = signed("standard")
    sig = headers["webhook-signature"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = sig[-2]  # the character before "="
    twin = alphabet[alphabet.index(last) ^ 1]
    variant = sig[:-2] + twin + "="
    assert base64.b64decode(variant[3:]) == base64.b64decode(sig[3:])
    rejected("standard", {**headers, "webhook-signature": variant})


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("scheme", SCHEMES)
def test_rotation_previous_secret_still_verifies(scheme):
    new, old = SECRETS[scheme]
    headers = signed(scheme, secret=old)
    assert check(scheme, headers, secrets=[new, old])
    assert check(scheme, headers, secrets=[old, new])
    rejected(scheme, headers, secrets=[new])
    assert check(scheme, signed(scheme, secret=new), secrets=[new, old])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_empty_secrets_list_fails(scheme):
    reason = rejected(scheme, signed(scheme), secrets=[])
    assert "no signing secret" in reason


@pytest.mark.parametrize("scheme", ["github", "hmac"])
def test_empty_secret_is_never_used_as_a_key(scheme):
    # Anyone can compute an HMAC with an empty key: such a secret must not verify anything.
    mac = hmac.new(b"", BODY, hashlib.sha256).hexdigest()
    headers = {SIGNATURE_HEADER[scheme]: ("sha256=" if scheme == "github" else "") + mac}
    rejected(scheme, headers, secrets=[""])
    rejected(scheme, headers, secrets=["", PLAIN_SECRET])


def test_undecodable_standard_secret_is_skipped():
    headers = signed("standard")
    check("standard", headers, secrets=["whsec_***not base64***", STANDARD_SECRET])
    rejected("standard", headers, secrets=["whsec_***not base64***"])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_single_string_is_not_a_list_of_secrets(scheme):
    with pytest.raises(TypeError):
        verify(scheme, SECRETS[scheme][0], signed(scheme), BODY, tolerance_s=300, now=NOW)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_reasons_never_leak_secrets_or_expected_signatures(scheme):
    secret = SECRETS[scheme][0]
    good = signed(scheme)
    name = SIGNATURE_HEADER[scheme]
    expected_fragments = {secret, secret.removeprefix("whsec_"), good[name]}
    expected_fragments |= {hex_hmac(secret, BODY), stripe_v1(secret, NOW, BODY)}
    for headers, body in (
        (good, BODY + b"x"),
        ({**good, name: replace_at(good[name], len(good[name]) - 1)}, BODY),
        ({}, BODY),
    ):
        reason = rejected(scheme, headers, body=body)
        for fragment in expected_fragments:
            assert fragment[-16:] not in reason


def test_unknown_scheme_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown signature scheme"):
        verify("svix", [PLAIN_SECRET], {}, BODY, tolerance_s=300, now=NOW)
    with pytest.raises(ValueError):
        generate_secret("svix")
    with pytest.raises(ValueError):
        validate_secret("svix", PLAIN_SECRET)
    with pytest.raises(ValueError):
        sign("svix", PLAIN_SECRET, BODY)


def test_body_must_be_bytes():
    with pytest.raises(TypeError):
        verify("hmac", [PLAIN_SECRET], signed("hmac"), BODY.decode(), tolerance_s=300, now=NOW)
    check("hmac", signed("hmac"), body=bytearray(BODY))
    check("hmac", signed("hmac"), body=memoryview(BODY))


# --------------------------------------------------------------------------- generate / validate


@pytest.mark.parametrize("scheme", SCHEMES)
def test_generated_secrets_are_valid_and_unique(scheme):
    made = {generate_secret(scheme) for _ in range(20)}
    assert len(made) == 20
    for secret in made:
        assert validate_secret(scheme, secret) is None
        check(scheme, signed(scheme, secret=secret), secrets=[secret])


def test_generated_secret_shapes():
    standard = generate_secret("standard")
    assert standard.startswith("whsec_")
    assert len(base64.b64decode(standard.removeprefix("whsec_"), validate=True)) == 32
    Webhook(standard)  # the reference library accepts it
    stripe_secret = generate_secret("stripe")
    assert stripe_secret.startswith("whsec_") and len(stripe_secret) == len("whsec_") + 32
    assert all(c.isalnum() or c in "-_" for c in stripe_secret.removeprefix("whsec_"))
    for scheme in ("github", "hmac"):
        plain = generate_secret(scheme)
        assert len(plain) == 43 and all(c.isalnum() or c in "-_" for c in plain)


@pytest.mark.parametrize(
    ("scheme", "secret"),
    [
        ("standard", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),  # no whsec_ prefix
        ("standard", "whsec_"),
        ("standard", "whsec_not*base64*at*all*here*!!"),
        ("standard", "whsec_" + base64.b64encode(b"x" * 16).decode()),  # too short a key
        ("standard", "whsec_" + base64.b64encode(b"x" * 65).decode()),  # too long a key
        ("stripe", "sk_test_1234567890abcdefghij"),
        ("stripe", "whsec_short"),
        ("github", "short"),
        ("hmac", "x" * 15),
        ("hmac", " " + "x" * 20),
        ("hmac", "x" * 20 + "\n"),
        ("hmac", "x" * 10 + "\x00" + "x" * 10),
        ("hmac", "x" * 2000),
        ("hmac", None),
        ("hmac", b"x" * 20),
    ],
)
def test_invalid_secrets_are_explained(scheme, secret):
    message = validate_secret(scheme, secret)
    assert isinstance(message, str) and message


@pytest.mark.parametrize(
    ("scheme", "secret"),
    [
        ("standard", STANDARD_SECRET),
        ("standard", STANDARD_OLD_SECRET),
        ("standard", "whsec_" + base64.b64encode(b"y" * 64).decode()),
        ("stripe", STRIPE_SECRET),
        ("stripe", "whsec_" + "a" * 64),
        ("github", "It's a Secret to Everybody"),
        ("hmac", PLAIN_SECRET),
    ],
)
def test_valid_secrets(scheme, secret):
    assert validate_secret(scheme, secret) is None


# --------------------------------------------------------------------------- sign


def test_sign_standard_matches_the_reference_library():
    headers = sign("standard", STANDARD_SECRET, BODY, delivery_id="msg_1", timestamp=NOW)
    assert headers == {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(NOW),
        "webhook-signature": standard_sig(STANDARD_SECRET, "msg_1", NOW, BODY),
    }
    Webhook(STANDARD_SECRET)  # and the reference verifier agrees (its clock is real time):
    now = int(datetime.now(tz=UTC).timestamp())
    live = sign("standard", STANDARD_SECRET, BODY, delivery_id="msg_1", timestamp=now)
    assert Webhook(STANDARD_SECRET).verify(BODY, live) == json.loads(BODY)


def test_sign_stripe_matches_the_stripe_library():
    headers = sign("stripe", STRIPE_SECRET, BODY, delivery_id=None, timestamp=NOW)
    assert headers == {"Stripe-Signature": stripe_header(STRIPE_SECRET, NOW, BODY)}
    now = int(datetime.now(tz=UTC).timestamp())
    live = sign("stripe", STRIPE_SECRET, BODY, delivery_id=None, timestamp=now)
    assert stripe.WebhookSignature.verify_header(
        BODY, live["Stripe-Signature"], STRIPE_SECRET, tolerance=300
    )


def test_sign_github_matches_the_documented_example():
    headers = sign(
        "github",
        "It's a Secret to Everybody",
        b"Hello, World!",
        delivery_id="d-1",
        timestamp=None,
        event_type="push",
    )
    assert headers == {
        "X-Hub-Signature-256": (
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        ),
        "X-GitHub-Delivery": "d-1",
        "X-GitHub-Event": "push",
    }


def test_sign_hmac_matches_plain_hmac():
    headers = sign("hmac", PLAIN_SECRET, BODY, delivery_id="evt-9", timestamp=None)
    assert headers == {"X-Signature": hex_hmac(PLAIN_SECRET, BODY), "X-Event-Id": "evt-9"}
    assert sign("hmac", PLAIN_SECRET, BODY) == {"X-Signature": hex_hmac(PLAIN_SECRET, BODY)}


def test_sign_requires_what_the_scheme_signs():
    with pytest.raises(ValueError):
        sign("standard", STANDARD_SECRET, BODY, delivery_id=None, timestamp=NOW)
    with pytest.raises(ValueError):
        sign("standard", STANDARD_SECRET, BODY, delivery_id="m", timestamp=None)
    with pytest.raises(ValueError):
        sign("standard", "whsec_***", BODY, delivery_id="m", timestamp=NOW)
    with pytest.raises(ValueError):
        sign("stripe", STRIPE_SECRET, BODY, delivery_id=None, timestamp=None)
    with pytest.raises(ValueError):
        sign("stripe", STRIPE_SECRET, BODY, timestamp=1.5)
    with pytest.raises(ValueError):
        sign("hmac", "", BODY)
    with pytest.raises(TypeError):
        sign("hmac", PLAIN_SECRET, BODY.decode())
