"""The page's modules in real Chromium (served with their CSP): the docs' worked examples and a Python payload.

tests/browser/test_js_modules.py runs the same modules under Node; this proves Chromium's WebCrypto agrees and
that the policy the page is served with does not block any of it.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from shared.crypto import cobblestone

pytestmark = pytest.mark.browser

DOCS = Path(__file__).resolve().parents[2] / "docs"

# Runs in the page: imports the served modules and returns what they compute.
DECRYPT = """async ([keyHex, op, name, ctB64]) => {
  const c = await import(new URL('static/cobblestone.js', document.baseURI).href);
  const hex = (h) => Uint8Array.from(h.match(/../g) ?? [], (b) => parseInt(b, 16));
  const ct = Uint8Array.from(atob(ctB64), (ch) => ch.charCodeAt(0));
  try {
    const plain = await c.decryptBytes(hex(keyHex), c.artifactContext(op, name), ct);
    return { b64: btoa(String.fromCharCode(...plain)) };
  } catch (error) {
    return { error: `${error.name}: ${error.message}` };
  }
}"""
UNWRAP = """async ([secretHex, wrap, op, name]) => {
  const k = await import(new URL('static/keywrap.js', document.baseURI).href);
  const hex = (h) => Uint8Array.from(h.match(/../g), (b) => parseInt(b, 16));
  const { dataKey, sha256 } = k.unwrapDataKey(hex(secretHex), wrap, op, name);
  return { dk: Array.from(dataKey, (b) => b.toString(16).padStart(2, '0')).join(''), sha256 };
}"""
SIGN = """async ([keyHex, url, created, nonce]) => {
  const e = await import(new URL('static/erc8128.js', document.baseURI).href);
  const { Wallet } = await import(new URL('static/vendor/ethers.min.js', document.baseURI).href);
  const wallet = new Wallet(keyHex);
  const signer = { address: wallet.address, signMessage: (text) => wallet.signMessage(text) };
  const body = new TextEncoder().encode('{"agent":"privacy-audit","input":{"text":"hello"}}');
  return e.signRequest(signer, 'POST', url, body, { created, nonce, ttl: 60 });
}"""


def example(name: str) -> dict[str, Any]:
    match = re.search(rf"<!-- example:{name} -->\s*```json\n(.*?)\n```", (DOCS / "encryption.md").read_text(), re.S)
    assert match
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def signing_block(name: str) -> str:
    match = re.search(
        rf"<!-- worked-example:{name} -->\n```[a-z]*\n(.*?)\n```", (DOCS / "signing.md").read_text(), re.S
    )
    assert match
    return match.group(1)


@pytest.fixture
def loaded(static_page: str, browser_page: Any) -> Any:
    browser_page.goto(f"{static_page}/app/")
    # Not wait_for_function: its string predicate is polled through eval, which the page's CSP refuses.
    expect(browser_page.locator("body")).to_have_attribute("data-ready", "true")
    return browser_page


def test_docs_examples_in_chromium(loaded: Any) -> None:
    cob, wrap = example("cobblestone"), example("keywrap")
    ct = base64.b64encode(bytes.fromhex(cob["ciphertext_hex"])).decode()
    result = loaded.evaluate(DECRYPT, [cob["data_key_hex"], cob["operation_id"], cob["artifact_name"], ct])
    assert base64.b64decode(result["b64"]).decode() == cob["plaintext_utf8"]

    opened = loaded.evaluate(
        UNWRAP, [wrap["recipient_secret_hex"], wrap["wrap"], wrap["operation_id"], wrap["artifact_name"]]
    )
    assert opened["dk"] == cob["data_key_hex"]

    headers = loaded.evaluate(
        SIGN,
        [
            signing_block("key").strip(),
            "https://strongroom.example/api/v1/operations",
            1767225600,
            "AAECAwQFBgcICQoLDA0ODw",
        ],
    )
    assert headers == dict(line.split(": ", 1) for line in signing_block("headers").splitlines())
    assert not [m for m in loaded.console_messages_seen if "Content Security Policy" in m or m.startswith("pageerror")]


def test_multi_chunk_python_payload_and_moved_ciphertext_in_chromium(loaded: Any) -> None:
    key, plaintext = os.urandom(32), os.urandom(3 * cobblestone.CHUNK_SIZE + 5)
    op, name = "privacy-audit_abcdefghijklmnopqrstuvwx", "data.bin"
    sealed = b"".join(cobblestone.encrypt_stream(key, cobblestone.artifact_context(op, name), [plaintext]))
    ct = base64.b64encode(sealed).decode()
    assert base64.b64decode(loaded.evaluate(DECRYPT, [key.hex(), op, name, ct])["b64"]) == plaintext
    moved = loaded.evaluate(DECRYPT, [key.hex(), op, "renamed.bin", ct])
    assert moved["error"].startswith("IntegrityError: key commitment mismatch")
