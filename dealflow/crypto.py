"""Secrets at rest and API keys.

:class:`SecretBox` encrypts webhook signing secrets before they are stored: AES-256-GCM with a
random 96-bit nonce, the key derived from a settings string with HKDF-SHA256 (so a passphrase
of any length works). A token is ``"v1:" + base64(nonce + ciphertext + tag)``.

API keys are high-entropy random strings, so a plain SHA-256 is the right way to store them
(it is what lookups by hash need; a slow password hash would buy nothing).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["SecretBox", "constant_time_equals", "hash_api_key", "new_api_key"]

_VERSION = "v1"
_PREFIX = _VERSION + ":"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HKDF_INFO = b"dealflow secret box v1"
_AAD = b"dealflow:" + _VERSION.encode() + b":"


def _derive(passphrase: str) -> AESGCM:
    if not isinstance(passphrase, str) or not passphrase:
        raise ValueError("the secret box needs a non-empty key string")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
        passphrase.encode("utf-8")
    )
    return AESGCM(key)


class SecretBox:
    """Encrypts short strings (signing secrets) for storage.

    ``key`` is the current settings string; ``previous`` are older ones that still decrypt
    (for rotating the key: decrypt with any, re-encrypt with the current one). ``context``
    binds a token to where it is stored (e.g. a source id): decrypting it under another
    context fails, so a ciphertext cannot be copied from one row to another.
    """

    __slots__ = ("_all", "_current")

    def __init__(self, key: str, *, previous: Sequence[str] = ()) -> None:
        if isinstance(previous, str):
            raise TypeError("previous must be a sequence of key strings, not a single string")
        self._current = _derive(key)
        self._all = (self._current, *(_derive(k) for k in previous))

    def __repr__(self) -> str:
        return "SecretBox(<redacted>)"

    def encrypt(self, plaintext: str, *, context: str = "") -> str:
        if not isinstance(plaintext, str):
            raise TypeError("plaintext must be a str")
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._current.encrypt(nonce, plaintext.encode("utf-8"), _aad(context))
        return _PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, token: str, *, context: str = "") -> str:
        """The plaintext; ``ValueError`` if the token is malformed, tampered or for another key."""
        if not isinstance(token, str) or not token.startswith(_PREFIX):
            raise ValueError("not a dealflow secret box token (expected 'v1:...')")
        try:
            raw = base64.b64decode(token[len(_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("malformed secret box token") from None
        if len(raw) < _NONCE_BYTES + _TAG_BYTES:
            raise ValueError("malformed secret box token")
        nonce, sealed = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
        aad = _aad(context)
        for box in self._all:
            try:
                plaintext = box.decrypt(nonce, sealed, aad)
            except InvalidTag:
                continue
            try:
                return plaintext.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("malformed secret box token") from None
        raise ValueError("cannot decrypt: wrong key, wrong context or tampered token")


def _aad(context: str) -> bytes:
    if not isinstance(context, str):
        raise TypeError("context must be a str")
    return _AAD + context.encode("utf-8")


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest under which an API key is stored and looked up."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_api_key(prefix: str = "dfk_") -> str:
    """A new API key: ``prefix`` + 43 url-safe characters (256 random bits)."""
    return prefix + secrets.token_urlsafe(32)


def constant_time_equals(a: str | bytes, b: str | bytes) -> bool:
    """``a == b`` in time independent of where they differ (for tokens and signatures)."""
    a_bytes = a.encode("utf-8") if isinstance(a, str) else bytes(a)
    b_bytes = b.encode("utf-8") if isinstance(b, str) else bytes(b)
    return hmac.compare_digest(a_bytes, b_bytes)
