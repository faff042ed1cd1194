"""The server keyring: documents, blobs, rotation helpers, and that secrets never leak into text."""

from __future__ import annotations

import base64
import json

import pytest

from shared.crypto import Keyring
from shared.errors import ConfigError, IntegrityError, KeyringError

pytestmark = pytest.mark.unit

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))


def _doc(primary: str = "a", **keys: bytes) -> str:
    keys = keys or {"a": KEY_A}
    return json.dumps({"primary": primary, "keys": {k: base64.b64encode(v).decode() for k, v in keys.items()}})


def test_round_trip_and_blob_names_its_key() -> None:
    ring = Keyring.from_json(_doc())
    blob = ring.encrypt(b"metadata", b"ops/1/metadata.json")
    assert ring.key_id_of(blob) == "a"
    assert ring.decrypt(blob, b"ops/1/metadata.json") == b"metadata"
    assert b"metadata" not in blob


def test_each_blob_has_a_fresh_nonce() -> None:
    ring = Keyring.from_json(_doc())
    assert ring.encrypt(b"x", b"") != ring.encrypt(b"x", b"")


def test_wrong_aad_is_an_integrity_error() -> None:
    ring = Keyring.from_json(_doc())
    blob = ring.encrypt(b"metadata", b"ops/1/metadata.json")
    with pytest.raises(IntegrityError, match="failed authentication"):
        ring.decrypt(blob, b"ops/2/metadata.json")


@pytest.mark.parametrize("position", [0, 4, 5, 6, 8, 20, -1])
def test_any_flipped_bit_fails(position: int) -> None:
    ring = Keyring.from_json(_doc())
    blob = bytearray(ring.encrypt(b"metadata", b"aad"))
    blob[position] ^= 0x01
    with pytest.raises((IntegrityError, KeyringError)):
        ring.decrypt(bytes(blob), b"aad")


def test_header_is_authenticated_relabelled_key_id_fails() -> None:
    # Two keys whose ids have the same length: relabelling the blob must not decrypt under the other key.
    ring = Keyring.from_json(_doc("a", a=KEY_A, b=KEY_B))
    blob = ring.encrypt(b"metadata", b"aad")
    relabelled = blob[:6] + b"b" + blob[7:]
    assert ring.key_id_of(relabelled) == "b"
    with pytest.raises(IntegrityError):
        ring.decrypt(relabelled, b"aad")


def test_truncated_and_foreign_blobs() -> None:
    ring = Keyring.from_json(_doc())
    blob = ring.encrypt(b"", b"")
    for bad in (b"", b"SRKR", blob[:-1], b"XXXX" + blob[4:], blob[:4] + b"\x02" + blob[5:]):
        with pytest.raises(IntegrityError):
            ring.decrypt(bad, b"")


def test_unknown_key_id_is_a_keyring_error() -> None:
    old = Keyring.from_json(_doc())
    blob = old.encrypt(b"m", b"")
    other = Keyring.from_json(_doc("b", b=KEY_B))
    with pytest.raises(KeyringError, match="'a'"):
        other.decrypt(blob, b"")


def test_rotation_flow() -> None:
    ring = Keyring.from_json(Keyring.generate_json("k1"))
    old_blob = ring.encrypt(b"m", b"aad")
    rotated = ring.add_primary("k2")
    assert rotated.primary_id == "k2"
    assert rotated.key_ids == ("k1", "k2")
    assert ring.primary_id == "k1"  # immutable: the original is unchanged
    # Old blobs still open; the worker re-encrypts them under the new primary.
    assert rotated.key_id_of(old_blob) == "k1"
    new_blob = rotated.encrypt(rotated.decrypt(old_blob, b"aad"), b"aad")
    assert rotated.key_id_of(new_blob) == "k2"
    trimmed = Keyring.from_json(rotated.without("k1").to_json())
    assert trimmed.key_ids == ("k2",)
    assert trimmed.decrypt(new_blob, b"aad") == b"m"
    with pytest.raises(KeyringError):
        trimmed.decrypt(old_blob, b"aad")


def test_without_refuses_primary_and_unknown() -> None:
    ring = Keyring.from_json(_doc("a", a=KEY_A, b=KEY_B))
    with pytest.raises(KeyringError, match="primary"):
        ring.without("a")
    with pytest.raises(KeyringError):
        ring.without("zzz")


def test_add_primary_refuses_existing_id_and_generates_ids() -> None:
    ring = Keyring.from_json(_doc())
    with pytest.raises(KeyringError):
        ring.add_primary("a")
    fresh = ring.add_primary()
    assert fresh.primary_id != "a" and len(fresh.key_ids) == 2


def test_promote() -> None:
    ring = Keyring.from_json(_doc("a", a=KEY_A, b=KEY_B)).promote("b")
    assert ring.primary_id == "b"
    assert ring.key_id_of(ring.encrypt(b"", b"")) == "b"
    with pytest.raises(KeyringError):
        ring.promote("c")


def test_generate_json_is_a_valid_document() -> None:
    doc = json.loads(Keyring.generate_json())
    assert set(doc) == {"primary", "keys"}
    assert len(base64.b64decode(doc["keys"][doc["primary"]])) == 32
    assert Keyring.generate_json() != Keyring.generate_json()
    with pytest.raises(KeyringError):
        Keyring.generate_json("bad id!")


def test_to_json_round_trips() -> None:
    text = _doc("b", a=KEY_A, b=KEY_B)
    ring = Keyring.from_json(text)
    again = Keyring.from_json(ring.to_json())
    assert json.loads(again.to_json()) == json.loads(text)
    assert again.decrypt(ring.encrypt(b"z", b""), b"") == b"z"


SECRET_B64 = base64.b64encode(b"\xfe" * 31).decode()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"primary": "a"}',
        '{"primary": "a", "keys": {}}',
        '{"primary": "a", "keys": {"a": 5}}',
        '{"primary": "a", "keys": {"a": "!!notbase64!!"}}',
        '{"primary": "a", "keys": {"a": "' + SECRET_B64 + '"}}',
        '{"primary": "b", "keys": {"a": "' + base64.b64encode(KEY_A).decode() + '"}}',
        '{"primary": 1, "keys": {"a": "' + base64.b64encode(KEY_A).decode() + '"}}',
        '{"primary": "a b", "keys": {"a b": "' + base64.b64encode(KEY_A).decode() + '"}}',
        '{"primary": "a", "keys": {"a": "' + base64.b64encode(KEY_A).decode() + '"}, "extra": 1}',
    ],
)
def test_bad_documents_are_config_errors_without_key_bytes(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        Keyring.from_json(text)
    assert info.value.variable == "STRONGROOM_KEYRING"
    assert SECRET_B64 not in str(info.value)
    assert base64.b64encode(KEY_A).decode() not in str(info.value)


def test_repr_and_errors_hide_key_bytes() -> None:
    ring = Keyring.from_json(_doc("a", a=KEY_A, b=KEY_B))
    text = repr(ring)
    assert "'a'" in text and "'b'" in text
    for key in (KEY_A, KEY_B):
        assert base64.b64encode(key).decode() not in text
        assert key.hex() not in text
        assert repr(key) not in text


def test_keyring_from_settings_requires_one() -> None:
    from shared.settings import Settings

    with pytest.raises(ConfigError) as info:
        Keyring.from_settings(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}))
    assert "STRONGROOM_KEYRING" in str(info.value)
    document = Keyring.generate_json("k1")
    loaded = Keyring.from_settings(Settings.from_env({"REDIS_URL": "redis://x:1/0", "STRONGROOM_KEYRING": document}))
    assert loaded.primary_id == "k1"
