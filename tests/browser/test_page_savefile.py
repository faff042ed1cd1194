"""Downloads written to disk as they stream (the File System Access API), in real Chromium against the real stack.

Headless Chromium shows no save dialog, so ``window.showSaveFilePicker`` is replaced by an init script that
answers with a real Origin Private File System handle: the page's ``createWritable``/``write``/``close``/``abort``
calls are Chromium's own, and each call is logged so a test sees what reached the file and in which order. The
page must write only authenticated chunks, commit the file only after both checksums match, keep no file after a
failed check or a cancel, ignore its in-memory cap on that path, and resume with a ``Range`` request as before.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from shared.crypto import cobblestone
from shared.models import GetOperationResponse
from strongroom.client.identity import Identity, create_identity
from strongroom.client.sdk import StrongroomClient
from tests.browser.test_page_app import (
    BIG_INPUT,
    SLOW,
    VIEWPORTS,
    CutShortStorage,
    assert_local,
    assert_no_horizontal_scroll,
    finished,
    open_operation,
    row,
    sign_in,
)
from tests.browser.test_page_download import stored_key

pytestmark = [pytest.mark.browser, pytest.mark.integration]

NAME = "privacy_audit.md"
STORAGE = re.compile(r".*\.enc\?.*X-Amz-Signature=.*")  # the presigned S3 GETs of ciphertext

# The save dialog, answered with a file in the origin's private file system. `savePicker.calls` says whether the
# page asked inside the click (window.event is the click only while its listeners run: after an await a real
# browser would refuse the picker for lack of a user gesture); `savePicker.log` lists what the writable got.
PICKER = """
window.savePicker = { calls: [], log: [], dismiss: false };
window.showSaveFilePicker = async (options = {}) => {
  const picker = window.savePicker;
  picker.calls.push({ name: options.suggestedName ?? '', inClick: window.event?.type === 'click' });
  if (picker.dismiss) throw new DOMException('The user aborted a request.', 'AbortError');
  const root = await navigator.storage.getDirectory();
  const handle = await root.getFileHandle(options.suggestedName, { create: true });
  const createWritable = handle.createWritable.bind(handle);
  handle.createWritable = async (...args) => {
    const writable = await createWritable(...args);
    for (const method of ['write', 'close', 'abort']) {
      const real = writable[method].bind(writable);
      writable[method] = (data) => {
        picker.log.push(method === 'write' ? `write ${data.size ?? data.byteLength}` : method);
        return real(data);
      };
    }
    return writable;
  };
  return handle;
};
"""
# Every file in the origin's private file system, with its SHA-256 (computed in the page).
FILES = """async () => {
  const root = await navigator.storage.getDirectory();
  const files = {};
  for await (const [name, handle] of root.entries()) {
    if (handle.kind !== 'file') { files[name] = 'directory'; continue; }
    const digest = await crypto.subtle.digest('SHA-256', await (await handle.getFile()).arrayBuffer());
    files[name] = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
  }
  return files;
}"""


@pytest.fixture(scope="module")
def grantee(tmp_path_factory: pytest.TempPathFactory) -> tuple[Identity, Path]:
    path = tmp_path_factory.mktemp("grantee") / "identity.json"
    return create_identity(path), path


@pytest.fixture(scope="module")
def big_operation(page_api: str, celery_worker: Any, grantee: tuple[Identity, Path]) -> GetOperationResponse:
    return finished(page_api, grantee[0], BIG_INPUT)


@pytest.fixture(scope="module")
def expected(
    page_api: str, big_operation: GetOperationResponse, grantee: tuple[Identity, Path], tmp_path_factory: Any
) -> bytes:
    """The SDK's plaintext of the big report: more than one 256 KiB write batch of 16 KiB chunks."""
    target = tmp_path_factory.mktemp("sdk") / NAME
    with StrongroomClient(page_api, grantee[0]) as client:
        client.download(big_operation.id, NAME, target)
    data = target.read_bytes()
    assert len(data) > 280 * 1024
    return data


@pytest.fixture(params=list(VIEWPORTS))
def viewport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def app(chromium: Any, viewport: str) -> Iterator[Any]:
    """The page at the given size in a fresh context with the stand-in save dialog (not conftest's browser_page,
    which removes the picker); no request may leave the machine, nothing may be offered as an in-memory download."""
    context = chromium.new_context(accept_downloads=True, viewport=VIEWPORTS[viewport])
    context.add_init_script(PICKER)
    page = context.new_page()
    page.console_messages_seen = []
    page.on("console", lambda message: page.console_messages_seen.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: page.console_messages_seen.append(f"pageerror: {error}"))
    page.requests_seen = []
    page.on("request", lambda request: page.requests_seen.append(request.url))
    page.offered = []
    page.on("download", lambda download: page.offered.append(download))
    try:
        yield page
        assert_local(page.requests_seen)
        seen = "\n".join(page.console_messages_seen)
        assert "pageerror" not in seen, seen
        assert "Content Security Policy" not in seen, seen
    finally:
        context.close()


def lower_memory_cap(page: Any, cap: int) -> None:
    """config.json may lower the page's in-memory cap: rewrite its answer so a small artifact is over it."""

    def config(route: Any) -> None:
        response = route.fetch()
        route.fulfill(response=response, body=json.dumps({**response.json(), "max_browser_bytes": cap}))

    page.route(re.compile(r".*/app/config\.json$"), config)


def files(page: Any) -> dict[str, str]:
    result: dict[str, str] = page.evaluate(FILES)
    return result


def picker(page: Any) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate("() => window.savePicker")
    return result


def start(page: Any, api: str, grantee: tuple[Identity, Path], operation: GetOperationResponse) -> Any:
    identity, identity_file = grantee
    sign_in(page, api, identity_file, identity)
    open_operation(page, operation.id)
    row(page, NAME).locator("button[data-action=download]").click()
    return row(page, NAME).locator(".row-status .text")


def test_the_file_is_written_as_it_streams_beyond_the_memory_cap_and_resumes_after_the_link_expired(
    page_api: str,
    big_operation: GetOperationResponse,
    expected: bytes,
    object_store: Any,
    app: Any,
    viewport: str,
    grantee: tuple[Identity, Path],
) -> None:
    """The connection breaks after 96 KiB, the next link has expired (403): the page asks for a fresh link and
    continues with a Range request, writing on into the same file; the artifact is over the in-memory cap
    (lowered to 64 KiB here), which does not apply when the file streams to disk. Preview, which needs the
    plaintext in memory, is still refused."""
    page = app
    lower_memory_cap(page, 64 * 1024)
    ciphertext = object_store.get_bytes(stored_key(object_store, big_operation.id, NAME))
    cut = CutShortStorage(ciphertext, page_api, cut=96 * 1024)
    seen: list[str] = []

    def storage(route: Any) -> None:
        seen.append(route.request.headers.get("range", ""))
        if len(seen) == 1:
            route.continue_(url=cut.url)
        elif len(seen) == 2:
            route.fulfill(status=403, headers={"access-control-allow-origin": page_api}, body="AccessDenied")
        else:
            route.continue_()

    page.route(STORAGE, storage)
    try:
        status = start(page, page_api, grantee, big_operation)
        expect(status).to_contain_text(re.compile(r"[1-9][0-9.]* KiB of"), timeout=SLOW)
        cut.release.set()
        expect(status).to_contain_text(f"Saved to {NAME}", timeout=SLOW)
    finally:
        cut.close()
    expect(status).to_contain_text("checksums verified")
    assert files(page) == {NAME: hashlib.sha256(expected).hexdigest()}
    assert picker(page)["calls"] == [{"name": NAME, "inClick": True}]
    log = picker(page)["log"]
    writes = [int(entry.split()[1]) for entry in log if entry.startswith("write ")]
    assert log[-1] == "close" and "abort" not in log
    assert len(writes) >= 2 and sum(writes) == len(expected)  # in pieces as it streamed, not once at the end
    assert seen[0] == "" and re.fullmatch(r"bytes=[1-9]\d*-", seen[1]) and seen[2] == seen[1], seen
    assert page.offered == []
    assert page.locator(".saved-link").count() == 0  # nothing held in memory to save again
    expect(page.locator(".error:visible")).to_have_count(0)
    assert_no_horizontal_scroll(page, "saved to disk")

    row(page, NAME).locator("button[data-action=preview]").click()
    expect(status).to_contain_text("too large to decrypt in this browser's memory", timeout=SLOW)
    assert len(picker(page)["calls"]) == 1  # Preview never asks for a file


def flip_in_a_late_chunk(page: Any, plaintext_size: int) -> str:
    """Flip one bit in the last full chunk: the chunks before it verify, that one does not."""
    index = plaintext_size // cobblestone.CHUNK_SIZE - 1
    offset = cobblestone.HEADER_SIZE + index * cobblestone.SEALED_CHUNK_SIZE + 100

    def storage(route: Any) -> None:
        response = route.fetch()
        body = bytearray(response.body())
        body[offset] ^= 0x01
        route.fulfill(response=response, body=bytes(body))

    page.route(STORAGE, storage)
    return f"chunk {index} failed authentication"


def wrong_ciphertext_checksum(page: Any, plaintext_size: int) -> str:
    """The ticket names another ciphertext checksum: every chunk verifies, the whole-object hash does not."""

    def ticket(route: Any) -> None:
        response = route.fetch()
        body = {**response.json(), "ciphertext_checksum": "sha256:" + hashlib.sha256(b"another object").hexdigest()}
        route.fulfill(response=response, body=json.dumps(body))

    page.route(re.compile(rf".*/api/v1/operations/[^/]+/artifacts/{re.escape(NAME)}$"), ticket)
    return "ciphertext checksum mismatch"


@pytest.mark.parametrize("tamper", [flip_in_a_late_chunk, wrong_ciphertext_checksum], ids=["flip", "checksum"])
def test_a_failed_check_aborts_the_file_and_keeps_nothing(
    page_api: str,
    big_operation: GetOperationResponse,
    expected: bytes,
    app: Any,
    viewport: str,
    grantee: tuple[Identity, Path],
    tamper: Any,
) -> None:
    page = app
    message = tamper(page, len(expected))
    status = start(page, page_api, grantee, big_operation)
    expect(status).to_contain_text("Integrity check failed", timeout=SLOW)
    expect(status).to_contain_text(re.compile(message, re.I))
    expect(row(page, NAME).locator(".row-status")).to_be_focused()
    log = picker(page)["log"]
    assert log[-1] == "abort" and "close" not in log, log
    if tamper is wrong_ciphertext_checksum:  # every chunk verified, so all of them were written: then aborted
        assert sum(int(entry.split()[1]) for entry in log if entry.startswith("write ")) == len(expected), log
    assert files(page) == {}  # no partial file, and not the empty one the dialog created either
    assert page.offered == []
    expect(row(page, NAME).locator("button[data-action=download]")).to_be_enabled()


def test_cancel_or_a_dismissed_dialog_keeps_no_file(
    page_api: str,
    big_operation: GetOperationResponse,
    expected: bytes,
    object_store: Any,
    app: Any,
    viewport: str,
    grantee: tuple[Identity, Path],
) -> None:
    page = app
    # Storage sends 270 KiB, then holds the connection: the first 256 KiB batch is on its way to the file.
    ciphertext = object_store.get_bytes(stored_key(object_store, big_operation.id, NAME))
    held = CutShortStorage(ciphertext, page_api, cut=270 * 1024)
    page.route(STORAGE, lambda route: route.continue_(url=held.url))
    try:
        status = start(page, page_api, grantee, big_operation)
        expect(status).to_contain_text(re.compile(r"[1-9][0-9.]* KiB of"), timeout=SLOW)
        expect(row(page, NAME).locator("progress")).to_have_attribute("value", re.compile(r"^[1-9]\d"), timeout=SLOW)
        row(page, NAME).locator("button[data-action=cancel]").click()
        expect(status).to_have_text("Cancelled. Nothing was saved.", timeout=SLOW)
    finally:
        held.close()
    log = picker(page)["log"]
    assert log[-1] == "abort" and "close" not in log, log
    assert files(page) == {}

    page.evaluate("() => { window.savePicker.dismiss = true; }")
    row(page, NAME).locator("button[data-action=download]").click()
    expect(status).to_have_text("Not saved: no file was chosen.")
    expect(row(page, NAME).locator("button[data-action=download]")).to_be_enabled()
    assert len(picker(page)["calls"]) == 2
    assert files(page) == {}
    assert page.offered == []
