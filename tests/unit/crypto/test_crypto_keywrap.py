"""Key wraps: eth-sig-util's published vector, Wycheproof X25519, wrap/unwrap rules and tamper cases."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from crypto_vectors import ids, vector_tests
from nacl.public import Box, PrivateKey, PublicKey

from shared.crypto import keywrap
from shared.errors import CryptoError, IntegrityError, ValidationFailed

pytestmark = pytest.mark.unit

# @metamask/eth-sig-util src/encryption.test.ts ("bob"): a wallet key doubles as the X25519 secret.
BOB_SECRET = bytes.fromhex("7e5374ec2ef0d91761a6e72fdf8f6ac665519bfdf6da0a2329cf0d804514b816")
BOB_PUBLIC = "C5YMNdqE4kLgxQhJO1MfuQcHP5hjVSXzamzd/TxlR0U="
BOB_MESSAGE = {
    "version": "x25519-xsalsa20-poly1305",
    "nonce": "1dvWO7uOnBnO7iNDJ9kO9pTasLuKNlej",
    "ephemPublicKey": "FBH1/pAEHOOW14Lu3FWkgV3qOEcuL78Zy+qW1RwzMXQ=",
    "ciphertext": "f8kBcl/NCyf3sybfbwAKk/np2Bzt9lRVkZejr6uh5FgnNlH/ic62DZzy",
}
SHA = hashlib.sha256(b"artifact").hexdigest()
DATA_KEY = bytes(range(32))


def test_eth_sig_util_published_vector() -> None:
    assert keywrap.public_key_from_secret(BOB_SECRET) == BOB_PUBLIC
    assert keywrap.decrypt_with(BOB_SECRET, BOB_MESSAGE) == b"My name is Satoshi Buterin"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ciphertext", "ffffff/NCyf3sybfbwAKk/np2Bzt9lRVkZejr6uh5FgnNlH/ic62DZzy"),
        ("ephemPublicKey", "FFFF/pAEHOOW14Lu3FWkgV3qOEcuL78Zy+qW1RwzMXQ="),
        ("nonce", ""),
        ("version", "x256k1-aes256cbc"),
    ],
)
def test_eth_sig_util_published_failures(field: str, value: str) -> None:
    with pytest.raises(IntegrityError):
        keywrap.decrypt_with(BOB_SECRET, {**BOB_MESSAGE, field: value})


def test_wrap_round_trip_and_payload_shape() -> None:
    secret, public = keywrap.generate_encryption_keypair()
    assert keywrap.public_key_from_secret(secret) == public
    wrapped = keywrap.wrap_data_key(public, "op_1", "report.pdf", DATA_KEY, SHA.upper())
    assert set(wrapped) == {"version", "nonce", "ephemPublicKey", "ciphertext"}
    assert wrapped["version"] == "x25519-xsalsa20-poly1305"
    payload = json.loads(keywrap.decrypt_with(secret, wrapped))
    assert list(payload) == ["v", "alg", "op", "name", "dk", "sha256"]
    assert payload["alg"] == "cobblestone-256" and payload["sha256"] == SHA
    opened = keywrap.unwrap_data_key(secret, wrapped, "op_1", "report.pdf")
    assert opened.data_key == DATA_KEY and opened.sha256 == SHA
    opened.check_plaintext_sha256(SHA)
    with pytest.raises(IntegrityError, match="SHA-256"):
        opened.check_plaintext_sha256(hashlib.sha256(b"other").hexdigest())
    assert DATA_KEY.hex() not in repr(opened) and str(DATA_KEY) not in repr(opened)


def test_unicode_names_round_trip() -> None:
    secret, public = keywrap.generate_encryption_keypair()
    wrapped = keywrap.wrap_data_key(public, "op_ü", "résumé 📄.txt", DATA_KEY, SHA)
    assert keywrap.unwrap_data_key(secret, wrapped, "op_ü", "résumé 📄.txt").data_key == DATA_KEY


@pytest.mark.parametrize(("op", "name"), [("op_2", "report.pdf"), ("op_1", "other.pdf"), ("op_1", "report.PDF")])
def test_wrap_for_another_artifact_is_refused(op: str, name: str) -> None:
    secret, public = keywrap.generate_encryption_keypair()
    wrapped = keywrap.wrap_data_key(public, "op_1", "report.pdf", DATA_KEY, SHA)
    with pytest.raises(IntegrityError, match="another artifact"):
        keywrap.unwrap_data_key(secret, wrapped, op, name)


def test_wrong_recipient_and_tampering() -> None:
    secret, public = keywrap.generate_encryption_keypair()
    other_secret, _ = keywrap.generate_encryption_keypair()
    wrapped = keywrap.wrap_data_key(public, "op", "a", DATA_KEY, SHA)
    with pytest.raises(IntegrityError, match="not addressed"):
        keywrap.unwrap_data_key(other_secret, wrapped, "op", "a")
    sealed = bytearray(base64.b64decode(wrapped["ciphertext"]))
    sealed[-1] ^= 1
    with pytest.raises(IntegrityError):
        keywrap.unwrap_data_key(secret, {**wrapped, "ciphertext": base64.b64encode(sealed).decode()}, "op", "a")
    with pytest.raises(IntegrityError, match="exactly the fields"):
        keywrap.unwrap_data_key(secret, {**wrapped, "extra": "x"}, "op", "a")


def _box_payload(public: str, payload: Any) -> dict[str, str]:
    return keywrap.encrypt_for(public, json.dumps(payload).encode())


@pytest.mark.parametrize(
    "payload",
    [
        "not an object",
        {"v": 2, "alg": "cobblestone-256", "op": "op", "name": "a", "dk": "", "sha256": SHA},
        {"v": 1, "alg": "other", "op": "op", "name": "a", "dk": "", "sha256": SHA},
        {
            "v": 1,
            "alg": "cobblestone-256",
            "op": "op",
            "name": "a",
            "dk": base64.b64encode(b"x" * 31).decode(),
            "sha256": SHA,
        },
        {
            "v": 1,
            "alg": "cobblestone-256",
            "op": "op",
            "name": "a",
            "dk": base64.b64encode(DATA_KEY).decode(),
            "sha256": "XYZ",
        },
    ],
)
def test_malformed_payloads_are_refused(payload: Any) -> None:
    secret, public = keywrap.generate_encryption_keypair()
    with pytest.raises(IntegrityError):
        keywrap.unwrap_data_key(secret, _box_payload(public, payload), "op", "a")


def test_non_json_payload_is_refused() -> None:
    secret, public = keywrap.generate_encryption_keypair()
    with pytest.raises(IntegrityError, match="not JSON"):
        keywrap.unwrap_data_key(secret, keywrap.encrypt_for(public, b"\xff\xfe"), "op", "a")


def test_wrap_input_validation() -> None:
    _, public = keywrap.generate_encryption_keypair()
    with pytest.raises(CryptoError):
        keywrap.wrap_data_key(public, "op", "a", b"short", SHA)
    with pytest.raises(CryptoError):
        keywrap.wrap_data_key(public, "op", "a", DATA_KEY, "abc")


SMALL_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
]


@pytest.mark.parametrize(
    "b64",
    [
        "",
        "not base64!",
        base64.b64encode(b"x" * 31).decode(),
        base64.b64encode(b"x" * 33).decode(),
        base64.b64encode((2**255 - 19 + 1).to_bytes(32, "little")).decode(),  # non-canonical
        *(base64.b64encode(p).decode() for p in SMALL_ORDER),
    ],
)
def test_bad_public_keys_are_refused(b64: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        keywrap.parse_public_key(b64)
    assert info.value.code == "encryption_public_key_invalid"
    with pytest.raises(ValidationFailed):
        keywrap.wrap_data_key(b64, "op", "a", DATA_KEY, SHA)


@pytest.mark.parametrize("point", SMALL_ORDER)
def test_unwrap_refuses_small_order_ephemeral_keys(point: bytes) -> None:
    secret, _ = keywrap.generate_encryption_keypair()
    wrapped = {**BOB_MESSAGE, "ephemPublicKey": base64.b64encode(point).decode()}
    with pytest.raises(IntegrityError):
        keywrap.decrypt_with(secret, wrapped)


def test_interop_with_raw_nacl_box() -> None:
    # What tweetnacl's nacl.box does in eth-sig-util: box(msg, nonce, recipient pk, ephemeral sk).
    secret, public = keywrap.generate_encryption_keypair()
    ephemeral = PrivateKey.generate()
    nonce = bytes(24)
    sealed = Box(ephemeral, PublicKey(base64.b64decode(public))).encrypt(b"hello", nonce).ciphertext
    wrapped = {
        "version": "x25519-xsalsa20-poly1305",
        "nonce": base64.b64encode(nonce).decode(),
        "ephemPublicKey": base64.b64encode(bytes(ephemeral.public_key)).decode(),
        "ciphertext": base64.b64encode(sealed).decode(),
    }
    assert keywrap.decrypt_with(secret, wrapped) == b"hello"


X25519 = vector_tests("wycheproof_x25519_test.json")


@pytest.mark.parametrize("test", X25519, ids=ids(X25519))
def test_wycheproof_x25519(test: dict[str, Any]) -> None:
    private, public = bytes.fromhex(test["private"]), bytes.fromhex(test["public"])
    low_order = "LowOrderPublic" in test["flags"] or "ZeroSharedSecret" in test["flags"]
    if low_order:
        with pytest.raises(IntegrityError):
            keywrap.x25519(private, public)
        with pytest.raises(ValidationFailed):
            keywrap.parse_public_key(base64.b64encode(public).decode())
        return
    assert keywrap.x25519(private, public).hex() == test["shared"]
    if "NonCanonicalPublic" in test["flags"]:
        with pytest.raises(ValidationFailed):  # stricter than RFC 7748 for keys we accept from clients
            keywrap.parse_public_key(base64.b64encode(public).decode())
    elif int.from_bytes(public, "little") < 2**255 - 19:
        assert keywrap.parse_public_key(base64.b64encode(public).decode()) == public
