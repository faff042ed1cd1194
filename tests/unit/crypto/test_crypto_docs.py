"""docs/encryption.md's worked examples must stay true: each one is checked against the real code."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PrivateKey

from shared.crypto import Keyring, cobblestone, keywrap

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[3] / "docs" / "encryption.md"


def example(name: str) -> dict[str, Any]:
    match = re.search(rf"<!-- example:{name} -->\s*```json\n(.*?)\n```", DOC.read_text(), re.S)
    assert match, f"example {name!r} missing from {DOC}"
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def test_cobblestone_example() -> None:
    ex = example("cobblestone")
    key, salt = bytes.fromhex(ex["data_key_hex"]), bytes.fromhex(ex["salt_hex"])
    ctx = cobblestone.artifact_context(ex["operation_id"], ex["artifact_name"])
    assert ctx.decode() == ex["ctx_utf8"]
    ct = bytes.fromhex(ex["ciphertext_hex"])
    assert len(ct) == ex["ciphertext_size"] == cobblestone.ciphertext_size(len(ex["plaintext_utf8"].encode()))
    assert b"".join(cobblestone.decrypt_stream(key, ctx, [ct])).decode() == ex["plaintext_utf8"]
    again = cobblestone.encrypt_stream(key, ctx, [ex["plaintext_utf8"].encode()], salt=salt)
    assert b"".join(again) == ct
    okm = cobblestone.hkdf_expand_sha512(key, bytes.fromhex(ex["info_hex"]), 76)
    assert okm.hex() == ex["aead_key_hex"] + ex["base_nonce_hex"] + ex["commitment_hex"]


def test_keywrap_example() -> None:
    ex = example("keywrap")
    secret = bytes.fromhex(ex["recipient_secret_hex"])
    assert keywrap.public_key_from_secret(secret) == ex["recipient_public_b64"]
    ephemeral = PrivateKey(bytes.fromhex(ex["ephemeral_secret_hex"]))
    assert base64.b64encode(bytes(ephemeral.public_key)).decode() == ex["wrap"]["ephemPublicKey"]
    assert keywrap.decrypt_with(secret, ex["wrap"]).decode() == ex["payload_utf8"]
    opened = keywrap.unwrap_data_key(secret, ex["wrap"], ex["operation_id"], ex["artifact_name"])
    cob = example("cobblestone")
    assert opened.data_key.hex() == cob["data_key_hex"]
    opened.check_plaintext_sha256(hashlib.sha256(cob["plaintext_utf8"].encode()).hexdigest())


def test_keyring_example() -> None:
    ex = example("keyring")
    ring = Keyring.from_json(json.dumps(ex["keyring"]))
    blob = bytes.fromhex(ex["blob_hex"])
    assert blob.startswith(bytes.fromhex(ex["header_hex"] + ex["nonce_hex"]))
    assert ring.key_id_of(blob) == ex["keyring"]["primary"]
    assert ring.decrypt(blob, ex["aad_utf8"].encode()).decode() == ex["plaintext_utf8"]
