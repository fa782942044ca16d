"""Secrets at rest (AES-GCM with an HKDF-derived key) and API key helpers."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dealflow.crypto import SecretBox, constant_time_equals, hash_api_key, new_api_key

KEY = "correct horse battery staple"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def raw(token: str) -> bytes:
    return base64.b64decode(token.removeprefix("v1:"))


def token_of(data: bytes) -> str:
    return "v1:" + base64.b64encode(data).decode()


@pytest.mark.parametrize("plaintext", [SECRET, "", "ünïcødé ✓ 🔑", "x" * 10_000])
def test_round_trip(plaintext):
    box = SecretBox(KEY)
    token = box.encrypt(plaintext)
    assert token.startswith("v1:")
    assert box.decrypt(token) == plaintext
    assert SecretBox(KEY).decrypt(token) == plaintext  # same passphrase, new instance


def test_token_format_is_nonce_plus_aes_gcm_ciphertext():
    token = SecretBox(KEY).encrypt(SECRET)
    data = raw(token)
    assert len(data) == 12 + len(SECRET.encode()) + 16
    assert SECRET.encode() not in data and SECRET not in token
    # Decryptable by an independent AES-GCM with the documented HKDF-SHA256 derivation.
    key = HKDF(hashes.SHA256(), 32, salt=None, info=b"dealflow secret box v1").derive(KEY.encode())
    assert AESGCM(key).decrypt(data[:12], data[12:], b"dealflow:v1:") == SECRET.encode()


def test_every_encryption_uses_a_fresh_nonce():
    box = SecretBox(KEY)
    tokens = {box.encrypt(SECRET) for _ in range(50)}
    assert len(tokens) == 50
    assert len({raw(t)[:12] for t in tokens}) == 50


@pytest.mark.parametrize("passphrase", ["k", "short", "x" * 1000, "ünïcødé"])
def test_any_length_passphrase_works(passphrase):
    box = SecretBox(passphrase)
    assert box.decrypt(box.encrypt(SECRET)) == SECRET


def test_every_one_byte_tamper_is_detected():
    box = SecretBox(KEY)
    data = raw(box.encrypt(SECRET))
    for i in range(len(data)):
        tampered = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
        with pytest.raises(ValueError):
            box.decrypt(token_of(tampered))


def test_truncated_or_extended_tokens_fail():
    box = SecretBox(KEY)
    data = raw(box.encrypt(SECRET))
    for bad in (data[:-1], data[:28], data[:27], data[:12], b"", data + b"\x00"):
        with pytest.raises(ValueError):
            box.decrypt(token_of(bad))


def test_wrong_key_fails():
    token = SecretBox(KEY).encrypt(SECRET)
    with pytest.raises(ValueError, match="cannot decrypt"):
        SecretBox(KEY + "!").decrypt(token)


@pytest.mark.parametrize(
    "token", ["", "v1:", "v2:AAAA", "AAAA", "v1:not base64!!", "v1:AAA", None, 42, b"v1:AAAA"]
)
def test_malformed_tokens_fail(token):
    with pytest.raises(ValueError):
        SecretBox(KEY).decrypt(token)


def test_context_binds_a_token_to_its_row():
    box = SecretBox(KEY)
    token = box.encrypt(SECRET, context="src_1")
    assert box.decrypt(token, context="src_1") == SECRET
    with pytest.raises(ValueError):
        box.decrypt(token, context="src_2")
    with pytest.raises(ValueError):
        box.decrypt(token)


def test_previous_keys_still_decrypt_and_new_tokens_use_the_current_key():
    old = SecretBox("old key")
    old_token = old.encrypt(SECRET)
    rotated = SecretBox("new key", previous=["old key"])
    assert rotated.decrypt(old_token) == SECRET
    new_token = rotated.encrypt(SECRET)
    assert SecretBox("new key").decrypt(new_token) == SECRET
    with pytest.raises(ValueError):
        old.decrypt(new_token)
    with pytest.raises(TypeError):
        SecretBox("new key", previous="old key")


def test_empty_key_is_refused():
    with pytest.raises(ValueError):
        SecretBox("")
    with pytest.raises(ValueError):
        SecretBox("k", previous=[""])


def test_plaintext_must_be_text():
    with pytest.raises(TypeError):
        SecretBox(KEY).encrypt(b"bytes")  # type: ignore[arg-type]


def test_repr_does_not_show_the_key():
    box = SecretBox(KEY)
    assert KEY not in repr(box) and KEY not in str(box)


def test_hash_api_key():
    assert hash_api_key("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    key = new_api_key()
    assert hash_api_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert hash_api_key(key) != hash_api_key(key + "x")


def test_new_api_key():
    keys = {new_api_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert re.fullmatch(r"dfk_[A-Za-z0-9_-]{43}", key)
    assert new_api_key(prefix="adm_").startswith("adm_")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", new_api_key(prefix=""))


def test_constant_time_equals():
    assert constant_time_equals("abc", "abc")
    assert constant_time_equals(b"abc", b"abc")
    assert constant_time_equals("abc", b"abc")
    assert constant_time_equals("ü", "ü")
    assert not constant_time_equals("abc", "abd")
    assert not constant_time_equals("abc", "ab")
    assert not constant_time_equals("", "a")
    assert constant_time_equals("", "")
