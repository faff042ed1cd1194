"""The page in real Chromium against the real stack: SDK-created operations downloaded and decrypted in the browser.

Chromium fetches the presigned SeaweedFS URL cross-origin (bucket CORS), verifies and decrypts with WebCrypto and
tweetnacl, and offers the file; the bytes must equal what the Python SDK decrypted. A ciphertext swapped in S3
must show an error and offer nothing. Every test runs at 1280x800 and at 390x844.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account.messages import encode_defunct
from playwright.sync_api import expect

from shared import layout
from shared.crypto import keywrap
from shared.models import GetOperationResponse
from strongroom.client.identity import Identity, create_identity
from strongroom.client.sdk import StrongroomClient
from tests.browser.test_page_app import VIEWPORTS, assert_no_horizontal_scroll

pytestmark = [pytest.mark.browser, pytest.mark.integration]

AUDIT_INPUT = {"text": "Write to alice@example.com or call +1 415 555 0100.\nCard: 4111 1111 1111 1111\n"}


@pytest.fixture(params=list(VIEWPORTS))
def browser_page(browser_page: Any, request: pytest.FixtureRequest) -> Any:
    """conftest's page, at each of the two sizes."""
    browser_page.set_viewport_size(VIEWPORTS[request.param])
    return browser_page


@pytest.fixture
def grantee(tmp_path: Path) -> Iterator[tuple[Identity, Path]]:
    path = tmp_path / "identity.json"
    yield create_identity(path), path


def finished_operation(api: str, identity: Identity) -> GetOperationResponse:
    with StrongroomClient(api, identity) as client:
        created = client.create("privacy-audit", AUDIT_INPUT)
        done = client.wait(created.id, timeout=120, max_interval=1.0)
    assert done.status == "succeeded", done.result
    assert done.artifacts.count >= 2
    return done


def row_status(page: Any, name: str) -> Any:
    return page.locator(f"#artifacts tr[data-artifact='{name}'] .row-status")


def load_identity_and_open(page: Any, api: str, identity_file: Path, identity: Identity, operation_id: str) -> None:
    page.goto(f"{api}/app/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.set_input_files("#identity-file", str(identity_file))
    expect(page.locator("#identity-status")).to_contain_text(identity.address)
    page.fill("#op-id", operation_id)
    page.click("#op-open")
    expect(page.locator("#op-status")).to_have_text("succeeded")


def test_browser_download_equals_sdk_plaintext(
    page_api: str, celery_worker: Any, browser_page: Any, grantee: tuple[Identity, Path], tmp_path: Path
) -> None:
    identity, identity_file = grantee
    done = finished_operation(page_api, identity)
    names = [artifact.name for artifact in done.artifacts.artifacts]
    sdk_dir = tmp_path / "sdk"
    sdk_dir.mkdir()
    with StrongroomClient(page_api, identity) as client:
        for name in names:
            client.download(done.id, name, sdk_dir / name)

    page = browser_page
    load_identity_and_open(page, page_api, identity_file, identity, done.id)
    expect(page.locator("#artifacts tbody tr")).to_have_count(len(names))
    for name in names:
        with page.expect_download() as info:
            page.click(f"#artifacts tr[data-artifact='{name}'] button[data-action=download]")
        download = info.value
        assert download.suggested_filename == name
        assert Path(download.path()).read_bytes() == (sdk_dir / name).read_bytes()
        expect(row_status(page, name)).to_contain_text("checksums verified")
    expect(page.locator(".error:visible")).to_have_count(0)
    assert_no_horizontal_scroll(page, "downloads saved")

    page.click("#list-refresh")
    expect(page.locator(f"#op-table button[data-op='{done.id}']")).to_be_visible()
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

    seen = "\n".join(page.console_messages_seen)
    assert "Content Security Policy" not in seen
    assert "pageerror" not in seen
    assert identity.account.key.hex().removeprefix("0x") not in seen


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("swap", re.compile("does not have the artifact's size|ciphertext checksum mismatch", re.I)),
        # Decrypted as it streams: the flipped bit fails its chunk's authentication before the whole-object hash.
        ("flip", re.compile("chunk 0 failed authentication|ciphertext checksum mismatch", re.I)),
    ],
)
def test_tampered_ciphertext_shows_an_error_and_offers_nothing(
    tamper: str,
    message: re.Pattern[str],
    page_api: str,
    celery_worker: Any,
    browser_page: Any,
    object_store: Any,
    grantee: tuple[Identity, Path],
    tmp_path: Path,
) -> None:
    identity, identity_file = grantee
    done = finished_operation(page_api, identity)
    victim, donor = done.artifacts.artifacts[0].name, done.artifacts.artifacts[1].name
    victim_key = stored_key(object_store, done.id, victim)
    if tamper == "swap":  # another artifact's genuine ciphertext where the victim's object lives
        forged = object_store.get_bytes(stored_key(object_store, done.id, donor))
    else:  # same size, one bit flipped inside the first chunk
        original = bytearray(object_store.get_bytes(victim_key))
        original[60] ^= 0x01
        forged = bytes(original)
    object_store.put_bytes(victim_key, forged)

    page = browser_page
    downloads: list[Any] = []
    page.on("download", lambda download: downloads.append(download))
    load_identity_and_open(page, page_api, identity_file, identity, done.id)
    page.click(f"#artifacts tr[data-artifact='{victim}'] button[data-action=download]")
    error = row_status(page, victim)
    expect(error).to_contain_text("Integrity check failed")
    expect(error).to_contain_text(message)
    expect(error).to_be_focused()
    expect(page.locator(f"#artifacts tr[data-artifact='{victim}'] button[data-action=download]")).to_be_enabled()
    assert downloads == []
    assert page.locator(".saved-link").count() == 0
    assert_no_horizontal_scroll(page, "integrity error in the row")
    page.screenshot(path=str(tmp_path / f"tampered-{tamper}.png"), full_page=True)


class FakeWallet:
    """An EIP-1193 provider backed by a Python identity: what MetaMask would answer, and which calls it got."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.calls: list[str] = []

    def request(self, method: str, params: list[Any]) -> Any:
        self.calls.append(method)
        if method == "eth_requestAccounts":
            return [self.identity.account.address]
        assert str(params[1]).lower() == self.identity.address  # MetaMask's param order: (data, address)
        if method == "personal_sign":
            signed = self.identity.account.sign_message(encode_defunct(hexstr=params[0]))
            return "0x" + bytes(signed.signature).hex()
        if method == "eth_decrypt":
            wrap = json.loads(bytes.fromhex(params[0].removeprefix("0x")))
            return keywrap.decrypt_with(self.identity.encryption_secret_key, wrap).decode()
        raise AssertionError(f"unexpected wallet method {method}")


def test_wallet_path_signs_with_personal_sign_and_unwraps_with_eth_decrypt(
    page_api: str, celery_worker: Any, browser_page: Any, grantee: tuple[Identity, Path], tmp_path: Path
) -> None:
    identity, _ = grantee
    done = finished_operation(page_api, identity)
    name = done.artifacts.artifacts[0].name
    with StrongroomClient(page_api, identity) as client:
        client.download(done.id, name, tmp_path / name)

    wallet = FakeWallet(identity)
    page = browser_page
    page.expose_function("__walletRequest", wallet.request)
    page.add_init_script(
        "window.ethereum = { request: ({ method, params }) => window.__walletRequest(method, params ?? []) };"
    )
    page.goto(f"{page_api}/app/")
    page.click("#wallet-connect")
    expect(page.locator("#identity-status")).to_contain_text(f"{identity.address} (browser wallet")
    page.fill("#op-id", done.id)
    page.click("#op-open")
    expect(page.locator("#op-status")).to_have_text("succeeded")
    with page.expect_download() as info:
        page.click(f"#artifacts tr[data-artifact='{name}'] button[data-action=download]")
    assert Path(info.value.path()).read_bytes() == (tmp_path / name).read_bytes()
    assert {"eth_requestAccounts", "personal_sign", "eth_decrypt"} <= set(wallet.calls)


def stored_key(store: Any, operation_id: str, name: str) -> str:
    """The one object holding artifact ``name`` (keys are per run; the served shape does not name the run)."""
    [key] = [i.key for i in store.list(layout.artifacts_prefix(operation_id)) if i.key.endswith(f"/{name}.enc")]
    return key


def test_a_malformed_signing_key_never_reaches_the_page(
    page_api: str, browser_page: Any, grantee: tuple[Identity, Path], tmp_path: Path
) -> None:
    """ethers quotes the value it cannot parse; the page must show a generic message instead of the key."""
    identity, identity_file = grantee
    doc = json.loads(identity_file.read_text())
    doc["signing_key"] = doc["signing_key"] + " "  # a pasted trailing space: still the whole secret
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    page = browser_page
    page.goto(f"{page_api}/app/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.set_input_files("#identity-file", str(broken))
    expect(page.locator("#identity-error")).to_contain_text("malformed signing key")
    expect(page.locator("#identity-error")).to_be_focused()
    secret = identity.account.key.hex().removeprefix("0x")
    assert secret not in page.content()
    assert not any(secret in line for line in page.console_messages_seen)


def test_proxy_delivery_downloads_through_the_api(
    proxy_page_api: str, celery_worker: Any, browser_page: Any, grantee: tuple[Identity, Path], tmp_path: Path
) -> None:
    """In proxy mode the JSON ticket points back at the API: the page makes a signed GET there, not to S3."""
    identity, identity_file = grantee
    done = finished_operation(proxy_page_api, identity)
    name = done.artifacts.artifacts[0].name
    with StrongroomClient(proxy_page_api, identity) as client:
        client.download(done.id, name, tmp_path / "sdk")

    page = browser_page
    load_identity_and_open(page, proxy_page_api, identity_file, identity, done.id)
    with page.expect_download() as info:
        page.click(f"#artifacts tr[data-artifact='{name}'] button[data-action=download]")
    assert Path(info.value.path()).read_bytes() == (tmp_path / "sdk").read_bytes()
    expect(page.locator(".error:visible")).to_have_count(0)
