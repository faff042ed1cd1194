"""The browser page's crypto modules, run under Node.js, agree with the Python implementation byte for byte.

The page's ``cobblestone.js``, ``keywrap.js`` and ``erc8128.js`` are plain ES modules on WebCrypto, which Node 20
also has, so they are checked here without a browser: docs/encryption.md's and docs/signing.md's worked
examples, fresh multi-chunk payloads encrypted by Python, and every tamper case the page must refuse.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from shared.auth.signer import sign_request
from shared.crypto import cobblestone, keywrap
from tests.helpers.node import requires_node, run_node

pytestmark = [
    pytest.mark.unit,
    pytest.mark.interop,
    requires_node,
]

ROOT = Path(__file__).resolve().parents[2]
OP, NAME = "privacy-audit_9f8e7d6c5b4a39281706f5e4", "report (final).md"


def run_modules(request: dict[str, Any]) -> dict[str, Any]:
    return run_node("browser_modules.mjs", request)


def doc_json(doc: str, name: str) -> dict[str, Any]:
    match = re.search(rf"<!-- example:{name} -->\s*```json\n(.*?)\n```", (ROOT / "docs" / doc).read_text(), re.S)
    assert match, f"docs/{doc} lost its example:{name} block"
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def doc_block(name: str) -> str:
    text = (ROOT / "docs" / "signing.md").read_text()
    match = re.search(rf"<!-- worked-example:{name} -->\n```[a-z]*\n(.*?)\n```", text, re.S)
    assert match, f"docs/signing.md lost its worked-example:{name} block"
    return match.group(1)


def encrypt(key: bytes, op: str, name: str, plaintext: bytes) -> bytes:
    return b"".join(cobblestone.encrypt_stream(key, cobblestone.artifact_context(op, name), [plaintext]))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- Cobblestone-256 ---


def test_decrypts_the_documented_example() -> None:
    ex = doc_json("encryption.md", "cobblestone")
    case = {
        "key_hex": ex["data_key_hex"],
        "op": ex["operation_id"],
        "name": ex["artifact_name"],
        "ciphertext_b64": b64(bytes.fromhex(ex["ciphertext_hex"])),
    }
    [result] = run_modules({"decrypt": [case]})["decrypt"]
    assert base64.b64decode(result["plaintext_b64"]).decode() == ex["plaintext_utf8"]


@pytest.mark.parametrize("size", [0, 1, 16383, 16384, 16385, 3 * 16384, 50_000])
def test_decrypts_python_payloads_at_chunk_boundaries(size: int) -> None:
    key, plaintext = os.urandom(32), os.urandom(size)
    case = {"key_hex": key.hex(), "op": OP, "name": NAME, "ciphertext_b64": b64(encrypt(key, OP, NAME, plaintext))}
    [result] = run_modules({"decrypt": [case]})["decrypt"]
    assert base64.b64decode(result["plaintext_b64"]) == plaintext


@pytest.mark.parametrize("size", [0, 16384, 50_000, 200_000])
def test_stream_decryptor_and_incremental_hashes_match_python_for_any_split(size: int) -> None:
    """The download path: ciphertext arriving in pieces of any size decrypts to the plaintext, and the page's own
    SHA-256 of both equals hashlib's."""
    key, plaintext = os.urandom(32), os.urandom(size)
    ciphertext = encrypt(key, OP, NAME, plaintext)
    steps = [1000, 16400, 65536, len(ciphertext)] if size else [7, len(ciphertext)]
    cases = [
        {"key_hex": key.hex(), "op": OP, "name": NAME, "ciphertext_b64": b64(ciphertext), "step": step}
        for step in steps
    ]
    for result in run_modules({"stream": cases})["stream"]:
        assert base64.b64decode(result["plaintext_b64"]) == plaintext
        assert result["cipher_sha256"] == hashlib.sha256(ciphertext).hexdigest()
        assert result["plain_sha256"] == hashlib.sha256(plaintext).hexdigest()
        assert result["consumed"] == len(ciphertext)


def test_refuses_every_tampered_payload() -> None:
    key, plaintext = os.urandom(32), os.urandom(40_000)  # three chunks: two full, one short
    good = encrypt(key, OP, NAME, plaintext)
    other_key = os.urandom(32)
    flipped = bytearray(good)
    flipped[56 + 20_000] ^= 0x01
    full = cobblestone.SEALED_CHUNK_SIZE
    reordered = good[:56] + good[56 + full : 56 + 2 * full] + good[56 : 56 + full] + good[56 + 2 * full :]
    cases = {
        "bit flip": (key, OP, NAME, bytes(flipped)),
        "truncated final chunk": (key, OP, NAME, good[:-1]),
        "dropped final chunk": (key, OP, NAME, good[: 56 + 2 * full]),
        "reordered chunks": (key, OP, NAME, reordered),
        "trailing data": (key, OP, NAME, good + b"\x00"),
        "moved to another name": (key, OP, "other.md", good),
        "moved to another operation": (key, "privacy-audit_000000000000000000000000", NAME, good),
        "wrong key": (other_key, OP, NAME, good),
        "header only": (key, OP, NAME, good[:56]),
    }
    request = {
        "decrypt": [
            {"key_hex": k.hex(), "op": op, "name": name, "ciphertext_b64": b64(ct)}
            for k, op, name, ct in cases.values()
        ]
    }
    request["stream"] = [{**case, "step": 5000} for case in request["decrypt"]]
    answer = run_modules(request)
    for kind in ("decrypt", "stream"):
        for label, result in zip(cases, answer[kind], strict=True):
            assert "plaintext_b64" not in result, (kind, label)
            assert result["error"].startswith("IntegrityError"), (kind, label, result)


# --- key wrap ---


def test_unwraps_the_documented_example() -> None:
    ex = doc_json("encryption.md", "keywrap")
    cob = doc_json("encryption.md", "cobblestone")
    case = {"secret_hex": ex["recipient_secret_hex"], "wrap": ex["wrap"], "op": ex["operation_id"]}
    [result] = run_modules({"unwrap": [{**case, "name": ex["artifact_name"]}]})["unwrap"]
    assert base64.b64decode(result["data_key_b64"]).hex() == cob["data_key_hex"]
    assert result["sha256"] == hashlib.sha256(cob["plaintext_utf8"].encode()).hexdigest()


def test_unwraps_python_wraps_and_refuses_misplaced_ones() -> None:
    secret, public = keywrap.generate_encryption_keypair()
    stranger, _ = keywrap.generate_encryption_keypair()
    data_key, digest = os.urandom(32), hashlib.sha256(b"artifact").hexdigest()
    wrap = keywrap.wrap_data_key(public, OP, NAME, data_key, digest)
    tampered = {
        **wrap,
        "ciphertext": b64(
            bytes([base64.b64decode(wrap["ciphertext"])[0] ^ 1]) + base64.b64decode(wrap["ciphertext"])[1:]
        ),
    }
    cases = [
        {"secret_hex": secret.hex(), "wrap": wrap, "op": OP, "name": NAME},
        {"secret_hex": secret.hex(), "wrap": wrap, "op": OP, "name": "other.md"},
        {"secret_hex": secret.hex(), "wrap": wrap, "op": "privacy-audit_000000000000000000000000", "name": NAME},
        {"secret_hex": stranger.hex(), "wrap": wrap, "op": OP, "name": NAME},
        {"secret_hex": secret.hex(), "wrap": tampered, "op": OP, "name": NAME},
        {
            "secret_hex": secret.hex(),
            "wrap": {**wrap, "version": "x25519-xsalsa20-poly1305-v2"},
            "op": OP,
            "name": NAME,
        },
    ]
    ok, *refused = run_modules({"unwrap": cases})["unwrap"]
    assert base64.b64decode(ok["data_key_b64"]) == data_key and ok["sha256"] == digest
    for result in refused:
        assert result.get("error", "").startswith("IntegrityError"), result


# --- ERC-8128 signing ---


def test_signs_the_documented_example_byte_for_byte() -> None:
    expected = dict(line.split(": ", 1) for line in doc_block("headers").splitlines())
    params = re.search(r"created=(\d+);expires=(\d+);nonce=\"([^\"]+)\"", expected["Signature-Input"])
    assert params
    case = {
        "key_hex": doc_block("key").strip(),
        "method": "POST",
        "url": "https://strongroom.example/api/v1/operations",
        "body_b64": b64(doc_block("body").encode()),
        "created": int(params[1]),
        "ttl": int(params[2]) - int(params[1]),
        "nonce": params[3],
        "chain_id": 1,
    }
    [result] = run_modules({"sign": [case]})["sign"]
    assert result["headers"] == expected


def test_signature_base_matches_the_documented_base() -> None:
    base = doc_block("base")
    digest = re.search(r'"content-digest": (.*)', base)
    assert digest
    case = {
        "method": "post",
        "authority": "strongroom.example",
        "path": "/api/v1/operations",
        "query": "?",
        "digest": digest[1],
        "params": {
            "created": 1767225600,
            "expires": 1767225660,
            "nonce": "AAECAwQFBgcICQoLDA0ODw",
            "keyid": "erc8128:1:0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
        },
    }
    assert run_modules({"base": [case]})["base"] == [base]


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "http://127.0.0.1:8080/api/v1/operations?limit=20&status=succeeded"),
        ("GET", "http://LOCALHOST:80/api/v1/operations/op_1/artifacts/report%20%28final%29.md"),
        ("DELETE", "https://Strongroom.Example:443/prefix/api/v1/operations/op_1/artifacts/a.json"),
        ("GET", "https://strongroom.example:8443/api/v1/operations/op_1?"),
    ],
)
def test_headers_equal_the_python_signer(method: str, url: str) -> None:
    key = "0x" + os.urandom(32).hex()
    created, nonce = 1_767_225_600, "AAECAwQFBgcICQoLDA0ODw"
    case = {"key_hex": key, "method": method, "url": url, "body_b64": "", "created": created, "ttl": 60}
    [result] = run_modules({"sign": [{**case, "nonce": nonce, "chain_id": 8453}]})["sign"]
    assert result["headers"] == sign_request(key, method, url, b"", chain_id=8453, created=created, nonce=nonce)
