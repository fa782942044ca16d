"""Webhook signature verification for the four source schemes, done the way each provider does it.

Everything here is pure: no I/O and no clock (the caller passes ``now`` in unix seconds), so it
is fast and fully unit-testable. Signatures are always compared with :func:`hmac.compare_digest`
and each HMAC is computed once per secret, whatever the number of signatures offered.

Schemes (see ``CONTRACT.md``, "Sources"):

* ``standard`` - Standard Webhooks v1: ``webhook-id``, ``webhook-timestamp`` and
  ``webhook-signature`` (space-separated ``v1,<base64>``); the signed content is
  ``"{id}.{timestamp}." + body``; the key is the base64-decoded part after ``whsec_``.
* ``github`` - ``X-Hub-Signature-256: sha256=<hex>`` of the raw body; id ``X-GitHub-Delivery``,
  type ``X-GitHub-Event``; key = the secret's UTF-8 bytes; no timestamp.
* ``stripe`` - ``Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex>...]``; the signed payload is
  ``"{t}." + body``; key = the secret's UTF-8 bytes (``whsec_`` included); ``v0`` never counts.
* ``hmac`` - ``X-Signature: <hex>`` (or ``sha256=<hex>``) of the raw body; id ``X-Event-Id``;
  key = the secret's UTF-8 bytes.

Hex signatures must be lower-case, as the providers send them. A :class:`SignatureError` never
carries a secret or an expected signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets as _secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SCHEMES",
    "Headers",
    "SignatureError",
    "Verified",
    "generate_secret",
    "sign",
    "stripe_ids",
    "validate_secret",
    "verify",
]

SCHEMES = ("standard", "github", "stripe", "hmac")

#: Anything header-like: a Starlette/httpx/werkzeug/aiohttp headers object (its
#: ``getlist``/``get_list``/``getall``/``get_all`` is used, so repeated headers are seen), a plain
#: mapping (looked up case-insensitively) or raw ``(name, value)`` pairs as in an ASGI scope.
Headers = Mapping[str, Any] | Iterable[tuple[Any, Any]]

STANDARD_PREFIX = "whsec_"

# Header names as the providers document them (matching is case-insensitive).
H_STANDARD_ID = "webhook-id"
H_STANDARD_TIMESTAMP = "webhook-timestamp"
H_STANDARD_SIGNATURE = "webhook-signature"
H_GITHUB_SIGNATURE = "X-Hub-Signature-256"
H_GITHUB_DELIVERY = "X-GitHub-Delivery"
H_GITHUB_EVENT = "X-GitHub-Event"
H_STRIPE_SIGNATURE = "Stripe-Signature"
H_HMAC_SIGNATURE = "X-Signature"
H_HMAC_ID = "X-Event-Id"

_TIMESTAMP = re.compile(r"[0-9]{1,15}")  # ASCII digits only (str.isdigit() accepts "١٢٣")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class SignatureError(Exception):
    """The request is not authentically signed (answer 401). ``reason`` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Verified:
    delivery_id: str | None
    event_type: str | None
    timestamp: int | None


# --------------------------------------------------------------------------- headers


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("latin-1")  # HTTP header bytes, as ASGI servers decode them
    return str(value)


def _header_values(headers: Headers, name: str) -> list[str]:
    """Every value sent for ``name`` (case-insensitive), so that duplicates can be refused."""
    for attr in ("getlist", "get_list", "getall", "get_all"):
        getter = getattr(headers, attr, None)
        if callable(getter):
            try:
                found = getter(name)
            except KeyError:  # aiohttp's getall() raises without a default
                found = None
            return [_text(v) for v in (found or [])]
    items = headers.items() if isinstance(headers, Mapping) else headers
    wanted = name.lower()
    values: list[str] = []
    for key, value in items:
        if _text(key).lower() != wanted:
            continue
        if isinstance(value, list | tuple):
            values.extend(_text(v) for v in value)
        else:
            values.append(_text(value))
    return values


def _header(headers: Headers, name: str) -> str | None:
    """The single value of ``name``; None when absent or blank; SignatureError when repeated."""
    values = [v.strip() for v in _header_values(headers, name)]
    if len(values) > 1:
        raise SignatureError(f"duplicated {name} header")
    if not values or not values[0]:
        return None
    return values[0]


def _required(headers: Headers, name: str) -> str:
    value = _header(headers, name)
    if value is None:
        raise SignatureError(f"missing {name} header")
    return value


# --------------------------------------------------------------------------- helpers


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown signature scheme {scheme!r}; expected one of {SCHEMES}")


def _eq(candidate: str, expected: str) -> bool:
    # compare_digest() refuses non-ASCII str; a non-ASCII candidate can never match anyway.
    return hmac.compare_digest(
        candidate.encode("utf-8", "replace"), expected.encode("utf-8", "replace")
    )


def _any_match(candidates: Sequence[str], expected: Iterable[str]) -> bool:
    """Compare every candidate with every expected value, without stopping at the first hit."""
    matched = False
    for exp in expected:
        for cand in candidates:
            matched |= _eq(cand, exp)
    return matched


def _parse_timestamp(raw: str, what: str) -> int:
    if not _TIMESTAMP.fullmatch(raw):
        raise SignatureError(f"{what} is not a unix timestamp in whole seconds")
    return int(raw)


def _check_tolerance(timestamp: int, *, tolerance_s: float, now: float) -> None:
    tolerance = f"{tolerance_s:g} s"
    if timestamp < now - tolerance_s:
        raise SignatureError(f"timestamp is too old (outside the {tolerance} tolerance)")
    if timestamp > now + tolerance_s:
        raise SignatureError(f"timestamp is in the future (outside the {tolerance} tolerance)")


def _standard_key(secret: str) -> bytes | None:
    """The HMAC key of a Standard Webhooks secret, or None if it is not valid base64."""
    raw = secret[len(STANDARD_PREFIX) :] if secret.startswith(STANDARD_PREFIX) else secret
    raw = raw.strip()
    if not raw or not _BASE64.fullmatch(raw):
        return None
    raw = raw.rstrip("=")
    if len(raw) % 4 == 1:
        return None
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key or None


def _keys(scheme: str, secrets: Sequence[str]) -> list[bytes]:
    if isinstance(secrets, str | bytes):
        raise TypeError("secrets must be a sequence of secrets, not a single string")
    keys: list[bytes] = []
    for secret in secrets:
        if not isinstance(secret, str) or not secret:
            continue  # an empty key would let anyone sign
        key = _standard_key(secret) if scheme == "standard" else secret.encode("utf-8")
        if key:
            keys.append(key)
    if not keys:
        raise SignatureError("no signing secret is configured for this source")
    return keys


def _mac(key: bytes, content: bytes) -> bytes:
    return hmac.new(key, content, hashlib.sha256).digest()


def _body_bytes(body: Any) -> bytes:
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    raise TypeError("body must be the raw request bytes exactly as received")


# --------------------------------------------------------------------------- verify


def verify(
    scheme: str,
    secrets: Sequence[str],
    headers: Headers,
    body: bytes,
    *,
    tolerance_s: float,
    now: float,
) -> Verified:
    """Check that ``body`` + ``headers`` were signed with one of ``secrets`` under ``scheme``.

    ``secrets`` holds every currently valid secret (the new and the previous one during a
    rotation); any of them may match. ``now`` is unix seconds. Raises :class:`SignatureError`
    (answer 401) for a missing, malformed, duplicated or non-matching signature and for a
    timestamp more than ``tolerance_s`` seconds in the past or in the future. Raises
    ``ValueError`` for an unknown scheme and ``TypeError`` for a non-bytes body.

    The returned ``delivery_id`` / ``event_type`` are None when the scheme carries them in the
    body (Stripe: see :func:`stripe_ids`; Standard Webhooks: the body's ``type``) or when the
    sender left the header out; the caller decides what that means.
    """
    _check_scheme(scheme)
    if tolerance_s < 0:
        raise ValueError("tolerance_s must not be negative")
    payload = _body_bytes(body)
    if scheme == "standard":
        return _verify_standard(secrets, headers, payload, tolerance_s=tolerance_s, now=now)
    if scheme == "github":
        return _verify_github(secrets, headers, payload)
    if scheme == "stripe":
        return _verify_stripe(secrets, headers, payload, tolerance_s=tolerance_s, now=now)
    return _verify_hmac(secrets, headers, payload)


def _verify_standard(
    secrets: Sequence[str], headers: Headers, body: bytes, *, tolerance_s: float, now: float
) -> Verified:
    msg_id = _required(headers, H_STANDARD_ID)
    raw_ts = _required(headers, H_STANDARD_TIMESTAMP)
    signature = _required(headers, H_STANDARD_SIGNATURE)
    timestamp = _parse_timestamp(raw_ts, H_STANDARD_TIMESTAMP)
    _check_tolerance(timestamp, tolerance_s=tolerance_s, now=now)
    # "v1,<b64> v1a,<...> v2,<...>": only v1 counts; other versions are ignored.
    candidates = [
        sig
        for version, _, sig in (entry.partition(",") for entry in signature.split())
        if version == "v1" and sig
    ]
    if not candidates:
        raise SignatureError(f"no v1 signature in the {H_STANDARD_SIGNATURE} header")
    keys = _keys("standard", secrets)
    content = f"{msg_id}.{raw_ts}.".encode() + body
    expected = (base64.b64encode(_mac(key, content)).decode("ascii") for key in keys)
    if not _any_match(candidates, expected):
        raise SignatureError("no signature matched")
    return Verified(delivery_id=msg_id, event_type=None, timestamp=timestamp)


def _hex_candidate(value: str, header: str, *, prefix_required: bool) -> str:
    if value.startswith("sha256="):
        value = value[len("sha256=") :]
    elif prefix_required:
        raise SignatureError(f"{header} header must look like sha256=<hex>")
    if not _HEX_SHA256.fullmatch(value):
        raise SignatureError(f"malformed {header} header: expected 64 lower-case hex characters")
    return value


def _verify_github(secrets: Sequence[str], headers: Headers, body: bytes) -> Verified:
    signature = _required(headers, H_GITHUB_SIGNATURE)
    delivery_id = _header(headers, H_GITHUB_DELIVERY)
    event_type = _header(headers, H_GITHUB_EVENT)
    candidate = _hex_candidate(signature, H_GITHUB_SIGNATURE, prefix_required=True)
    expected = (_mac(key, body).hex() for key in _keys("github", secrets))
    if not _any_match([candidate], expected):
        raise SignatureError("no signature matched")
    return Verified(delivery_id=delivery_id, event_type=event_type, timestamp=None)


def _verify_hmac(secrets: Sequence[str], headers: Headers, body: bytes) -> Verified:
    signature = _required(headers, H_HMAC_SIGNATURE)
    delivery_id = _header(headers, H_HMAC_ID)
    candidate = _hex_candidate(signature, H_HMAC_SIGNATURE, prefix_required=False)
    expected = (_mac(key, body).hex() for key in _keys("hmac", secrets))
    if not _any_match([candidate], expected):
        raise SignatureError("no signature matched")
    return Verified(delivery_id=delivery_id, event_type=None, timestamp=None)


def _verify_stripe(
    secrets: Sequence[str], headers: Headers, body: bytes, *, tolerance_s: float, now: float
) -> Verified:
    header = _required(headers, H_STRIPE_SIGNATURE)
    raw_ts: str | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if raw_ts is not None:
                raise SignatureError(f"duplicated t= in the {H_STRIPE_SIGNATURE} header")
            raw_ts = value.strip()
        elif key == "v1":
            candidates.append(value.strip())
        # v0 (Stripe's test-mode scheme) and unknown schemes never count.
    if raw_ts is None:
        raise SignatureError(f"missing t= timestamp in the {H_STRIPE_SIGNATURE} header")
    timestamp = _parse_timestamp(raw_ts, f"t= in the {H_STRIPE_SIGNATURE} header")
    _check_tolerance(timestamp, tolerance_s=tolerance_s, now=now)
    if not candidates:
        raise SignatureError(
            f"no v1 signature in the {H_STRIPE_SIGNATURE} header (v0 is not accepted)"
        )
    content = f"{raw_ts}.".encode() + body
    expected = (_mac(key, content).hex() for key in _keys("stripe", secrets))
    if not _any_match(candidates, expected):
        raise SignatureError("no signature matched")
    return Verified(delivery_id=None, event_type=None, timestamp=timestamp)


def stripe_ids(body_json: Any) -> tuple[str | None, str | None]:
    """``(delivery_id, event_type)`` of a Stripe event: the body's ``id`` and ``type``."""
    if not isinstance(body_json, Mapping):
        return None, None
    event_id, event_type = body_json.get("id"), body_json.get("type")
    return (
        event_id if isinstance(event_id, str) and event_id else None,
        event_type if isinstance(event_type, str) and event_type else None,
    )


# --------------------------------------------------------------------------- secrets


def generate_secret(scheme: str) -> str:
    """A new signing secret in the form the scheme's senders expect."""
    _check_scheme(scheme)
    if scheme == "standard":
        return STANDARD_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode("ascii")
    if scheme == "stripe":
        return STANDARD_PREFIX + _secrets.token_urlsafe(24)  # 32 url-safe characters
    return _secrets.token_urlsafe(32)


_MIN_SECRET_CHARS = 16
_MAX_SECRET_CHARS = 1024


def validate_secret(scheme: str, secret: Any) -> str | None:
    """Why ``secret`` cannot be used for ``scheme`` (a message), or None when it is fine."""
    _check_scheme(scheme)
    if not isinstance(secret, str):
        return "the secret must be a string"
    if secret != secret.strip():
        return "the secret must not start or end with whitespace"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in secret):
        return "the secret must not contain control characters"
    if len(secret) > _MAX_SECRET_CHARS:
        return f"the secret must be at most {_MAX_SECRET_CHARS} characters"
    if scheme == "standard":
        if not secret.startswith(STANDARD_PREFIX):
            return "a Standard Webhooks secret must be 'whsec_' followed by base64"
        key = _standard_key(secret)
        if key is None:
            return "the part after 'whsec_' must be valid base64"
        if not 24 <= len(key) <= 64:
            return "a Standard Webhooks secret must decode to 24 to 64 bytes"
        return None
    if scheme == "stripe":
        if not secret.startswith(STANDARD_PREFIX):
            return "a Stripe signing secret starts with 'whsec_' (copy it from Stripe)"
        if len(secret) - len(STANDARD_PREFIX) < _MIN_SECRET_CHARS:
            return (
                f"a Stripe signing secret has at least {_MIN_SECRET_CHARS} characters "
                "after 'whsec_'"
            )
        return None
    if len(secret) < _MIN_SECRET_CHARS:
        return f"the secret must be at least {_MIN_SECRET_CHARS} characters"
    return None


# --------------------------------------------------------------------------- sign


def sign(
    scheme: str,
    secret: str,
    body: bytes,
    *,
    delivery_id: str | None = None,
    timestamp: int | None = None,
    event_type: str | None = None,
) -> dict[str, str]:
    """The headers a sender of ``scheme`` would send with ``body`` (for scripts, benchmarks and
    outbound webhooks). ``standard`` needs ``delivery_id`` and ``timestamp``; ``stripe`` needs
    ``timestamp`` (its id and type live in the body); ``github`` and ``hmac`` use
    ``delivery_id`` (and ``github`` ``event_type``) when given."""
    _check_scheme(scheme)
    payload = _body_bytes(body)
    if not isinstance(secret, str) or not secret:
        raise ValueError("a non-empty secret is required")
    if timestamp is not None:
        if isinstance(timestamp, bool) or int(timestamp) != timestamp or timestamp < 0:
            raise ValueError("timestamp must be whole non-negative unix seconds")
        timestamp = int(timestamp)
    if scheme == "standard":
        if not delivery_id or timestamp is None:
            raise ValueError("the standard scheme needs delivery_id and timestamp")
        key = _standard_key(secret)
        if key is None:
            raise ValueError("a Standard Webhooks secret must be 'whsec_' followed by base64")
        content = f"{delivery_id}.{timestamp}.".encode() + payload
        signature = base64.b64encode(_mac(key, content)).decode("ascii")
        return {
            H_STANDARD_ID: delivery_id,
            H_STANDARD_TIMESTAMP: str(timestamp),
            H_STANDARD_SIGNATURE: f"v1,{signature}",
        }
    if scheme == "stripe":
        if timestamp is None:
            raise ValueError("the stripe scheme needs a timestamp")
        mac = _mac(secret.encode("utf-8"), f"{timestamp}.".encode() + payload).hex()
        return {H_STRIPE_SIGNATURE: f"t={timestamp},v1={mac}"}
    mac = _mac(secret.encode("utf-8"), payload).hex()
    if scheme == "github":
        headers = {H_GITHUB_SIGNATURE: f"sha256={mac}"}
        if delivery_id:
            headers[H_GITHUB_DELIVERY] = delivery_id
        if event_type:
            headers[H_GITHUB_EVENT] = event_type
        return headers
    headers = {H_HMAC_SIGNATURE: mac}
    if delivery_id:
        headers[H_HMAC_ID] = delivery_id
    return headers
