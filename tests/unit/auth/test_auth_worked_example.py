"""docs/signing.md's worked example is recomputed here: the page cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.auth.base import REQUIRED_COMPONENTS, RequestParts, signature_base
from shared.auth.signer import sign_request

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[3] / "docs" / "signing.md"
URL = "https://strongroom.example/api/v1/operations"
CREATED = 1767225600
NONCE = "AAECAwQFBgcICQoLDA0ODw"


def doc_block(name: str) -> str:
    match = re.search(rf"<!-- worked-example:{name} -->\n```[a-z]*\n(.*?)\n```", DOC.read_text(), re.S)
    assert match, f"docs/signing.md lost its worked-example:{name} block"
    return match.group(1)


def test_nonce_is_bytes_0_to_15() -> None:
    import base64

    assert base64.urlsafe_b64decode(NONCE + "==") == bytes(range(16))


def test_doc_headers_and_base_match_the_code() -> None:
    key, body = doc_block("key"), doc_block("body").encode()
    headers = sign_request(key, "POST", URL, body, created=CREATED, nonce=NONCE)
    assert [f"{name}: {value}" for name, value in headers.items()] == doc_block("headers").splitlines()

    params = {
        "created": CREATED,
        "expires": CREATED + 60,
        "nonce": NONCE,
        "keyid": "erc8128:1:0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
    }
    parts = RequestParts(
        "POST", "strongroom.example", "/api/v1/operations", "", {"content-digest": headers["Content-Digest"]}
    )
    assert signature_base(REQUIRED_COMPONENTS, params, parts) == doc_block("base")


def test_doc_signature_recovers_to_the_doc_address() -> None:
    import base64

    from eth_account import Account
    from eth_account.messages import encode_defunct

    signature = base64.b64decode(doc_block("headers").splitlines()[2].split("=:", 1)[1].rstrip(":"))
    recovered = Account.recover_message(encode_defunct(text=doc_block("base")), signature=signature)
    assert recovered.lower() == "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
