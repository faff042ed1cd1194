"""Key-wrap interop with @metamask/eth-sig-util under Node.js: each side opens what the other sealed."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from shared.crypto import keywrap
from tests.helpers.node import requires_node, run_node

pytestmark = [
    pytest.mark.interop,
    requires_node,
]

BOB_SECRET_HEX = "7e5374ec2ef0d91761a6e72fdf8f6ac665519bfdf6da0a2329cf0d804514b816"
BOB_PUBLIC = "C5YMNdqE4kLgxQhJO1MfuQcHP5hjVSXzamzd/TxlR0U="
SHA = "ab" * 32


def eth_sig_util(request: dict[str, Any]) -> dict[str, Any]:
    return run_node("crypto_keywrap.mjs", request)


def test_published_vector_in_node() -> None:
    assert eth_sig_util({"action": "publicKey", "privateKey": BOB_SECRET_HEX}) == {"publicKey": BOB_PUBLIC}
    encrypted = {
        "version": "x25519-xsalsa20-poly1305",
        "nonce": "1dvWO7uOnBnO7iNDJ9kO9pTasLuKNlej",
        "ephemPublicKey": "FBH1/pAEHOOW14Lu3FWkgV3qOEcuL78Zy+qW1RwzMXQ=",
        "ciphertext": "f8kBcl/NCyf3sybfbwAKk/np2Bzt9lRVkZejr6uh5FgnNlH/ic62DZzy",
    }
    answer = eth_sig_util({"action": "decrypt", "privateKey": BOB_SECRET_HEX, "encryptedData": encrypted})
    assert answer == {"data": "My name is Satoshi Buterin"}


def test_our_public_key_matches_metamask() -> None:
    secret, public = keywrap.generate_encryption_keypair()
    assert eth_sig_util({"action": "publicKey", "privateKey": secret.hex()}) == {"publicKey": public}


def test_eth_sig_util_opens_our_wrap() -> None:
    secret, public = keywrap.generate_encryption_keypair()
    data_key = bytes(range(32))
    wrapped = keywrap.wrap_data_key(public, "op_1", "résumé.pdf", data_key, SHA)
    answer = eth_sig_util({"action": "decrypt", "privateKey": secret.hex(), "encryptedData": wrapped})
    payload = json.loads(answer["data"])
    assert payload["op"] == "op_1" and payload["name"] == "résumé.pdf" and payload["sha256"] == SHA
    assert keywrap.unwrap_data_key(secret, wrapped, "op_1", "résumé.pdf").data_key == data_key


def test_we_open_eth_sig_util_encrypt_output() -> None:
    secret, public = keywrap.generate_encryption_keypair()
    data_key = bytes(range(1, 33))
    plaintext = json.dumps(
        {
            "v": 1,
            "alg": "cobblestone-256",
            "op": "op_9",
            "name": "out/data.csv",
            "dk": base64.b64encode(data_key).decode(),
            "sha256": SHA,
        }
    )
    wrapped = eth_sig_util({"action": "encrypt", "publicKey": public, "data": plaintext})
    assert wrapped["version"] == "x25519-xsalsa20-poly1305"
    opened = keywrap.unwrap_data_key(secret, wrapped, "op_9", "out/data.csv")
    assert opened.data_key == data_key and opened.sha256 == SHA


def test_metamask_wallet_key_as_grantee() -> None:
    # A grantee who only has MetaMask: the public key comes from eth_getEncryptionPublicKey of the wallet key.
    wrapped = keywrap.wrap_data_key(BOB_PUBLIC, "op_2", "a.txt", bytes(32), SHA)
    answer = eth_sig_util({"action": "decrypt", "privateKey": BOB_SECRET_HEX, "encryptedData": wrapped})
    assert json.loads(answer["data"])["op"] == "op_2"
