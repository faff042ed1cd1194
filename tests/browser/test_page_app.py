"""The page as a grantee uses it, in real Chromium against the real stack, at desktop (1280x800) and phone
(390x844) sizes: start an operation and watch it finish, download with progress on a throttled network, cancel
and restart, delete with a confirmation, the access log and a tampered one, the grant panel; in every state no
horizontal scroll, axe-core without violations in light and dark mode, and no request to another machine.

Screenshots: every test saves its views under its tmp_path; with ``STRONGROOM_UPDATE_SCREENSHOTS=1`` the ones
docs/browser.md shows are written to docs/img/ instead (``make`` never sets it: regenerate them by hand).
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from shared import audit_log
from shared.contracts import PERSIST_AUDIT
from shared.models import GetOperationResponse
from strongroom.client.identity import Identity, create_identity
from strongroom.client.sdk import StrongroomClient

pytestmark = [pytest.mark.browser, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "tests" / "interop" / "js" / "node_modules" / "axe-core" / "axe.min.js"
DOC_IMAGES = ROOT / "docs" / "img"
DOC_SHOTS = {
    "page-desktop-signed-in",
    "page-desktop-operation",
    "page-phone-downloading",
    "page-desktop-access-log",
    "page-desktop-access-log-rewritten",
    "page-phone-grant",
    "page-phone-dark-error",
}
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
SLOW = 180_000  # ms: the machine is shared; nothing here asserts a time
# Many findings make a report of a few hundred KiB: long enough to watch a throttled download move.
BIG_INPUT = {"text": "".join(f"Contact user{i}@example.com about ticket {i}.\n" for i in range(6000))}
SMALL_INPUT = {"text": "Write to alice@example.com or call +1 415 555 0100.\n"}


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grantee(tmp_path_factory: pytest.TempPathFactory) -> tuple[Identity, Path]:
    path = tmp_path_factory.mktemp("grantee") / "identity.json"
    return create_identity(path), path


def finished(api: str, identity: Identity, payload: dict[str, Any]) -> GetOperationResponse:
    with StrongroomClient(api, identity) as client:
        created = client.create("privacy-audit", payload)
        done = client.wait(created.id, timeout=300, max_interval=1.0)
    assert done.status == "succeeded", done.result
    return done


@pytest.fixture(scope="module")
def big_operation(page_api: str, celery_worker: Any, grantee: tuple[Identity, Path]) -> GetOperationResponse:
    return finished(page_api, grantee[0], BIG_INPUT)


@pytest.fixture(params=list(VIEWPORTS))
def viewport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def app(browser_page: Any, viewport: str) -> Iterator[Any]:
    """The page at the given size; every request it makes is collected, and none may leave the machine."""
    page = browser_page
    page.set_viewport_size(VIEWPORTS[viewport])
    page.requests_seen = []
    page.on("request", lambda request: page.requests_seen.append(request.url))
    yield page
    assert_local(page.requests_seen)
    seen = "\n".join(page.console_messages_seen)
    assert "pageerror" not in seen, seen
    assert "Content Security Policy" not in seen, seen


def assert_local(urls: list[str]) -> None:
    assert urls, "the page made no request at all"
    foreign = [
        u for u in urls if urlsplit(u).scheme not in {"blob", "data"} and urlsplit(u).hostname not in LOCAL_HOSTS
    ]
    assert foreign == [], f"requests left the machine: {foreign}"


# --- helpers --------------------------------------------------------------------------------------------------


def sign_in(page: Any, api: str, identity_file: Path, identity: Identity, hash_: str = "") -> None:
    page.goto(f"{api}/app/{hash_}")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.set_input_files("#identity-file", str(identity_file))
    expect(page.locator("#identity-status")).to_contain_text(identity.address)


def open_operation(page: Any, operation_id: str) -> None:
    page.fill("#op-id", operation_id)
    page.click("#op-open")
    expect_succeeded(page)
    expect(page.locator("#artifacts tbody tr").first).to_be_visible()


def expect_succeeded(page: Any) -> None:
    """The open operation reaches succeeded; if it does not, the failure names the errors the page shows."""
    try:
        expect(page.locator("#op-status")).to_have_text("succeeded", timeout=SLOW)
    except AssertionError as error:
        shown = page.locator(".error:visible").all_inner_texts()
        raise AssertionError(f"{error}\nerrors on the page: {shown}") from None


def row(page: Any, name: str) -> Any:
    return page.locator(f"#artifacts tr[data-artifact='{name}']")


def assert_no_horizontal_scroll(page: Any, state: str) -> None:
    """`document.documentElement.scrollWidth <= clientWidth`; on failure, name the elements that stick out."""
    report = page.evaluate(
        """() => {
          const root = document.documentElement;
          const width = root.clientWidth;
          const name = (node) => `${node.tagName.toLowerCase()}#${node.id}.${node.className}`;
          const wide = [...document.querySelectorAll('body *')]
            .filter((node) => node.getClientRects().length && (node.getBoundingClientRect().right > width + 0.5
              || (node.scrollWidth > node.clientWidth + 1 && getComputedStyle(node).overflowX === 'visible')))
            .slice(0, 12)
            .map((node) => `${name(node)} right=${Math.round(node.getBoundingClientRect().right)}`
              + ` sw=${node.scrollWidth}/${node.clientWidth}`);
          return { scroll: root.scrollWidth, client: width, wide };
        }"""
    )
    assert report["scroll"] <= report["client"], f"{state}: horizontal scroll {report}"


def run_axe(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations for the page as it is now (injected through the DevTools protocol: CSP allows no
    inline script, and the page's own CSP is what is being tested)."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `npm ci` in tests/interop/js (make test does)")
    page.evaluate(AXE.read_text(encoding="utf-8") + "\n;undefined")
    result: list[dict[str, Any]] = page.evaluate(
        """async () => {
          const { violations } = await axe.run(document, { resultTypes: ['violations'] });
          return violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.slice(0, 5).map((n) => `${n.target.join(' ')}: ${n.failureSummary}`) }));
        }"""
    )
    return result


def screenshot(page: Any, tmp_path: Path, name: str, part: str = "") -> None:
    """A PNG of the viewport, or of the element ``part`` (a CSS selector), under tmp_path; the ones docs/browser.md
    shows go to docs/img/ instead when regenerating them (``STRONGROOM_UPDATE_SCREENSHOTS=1``)."""
    regenerate = os.environ.get("STRONGROOM_UPDATE_SCREENSHOTS") == "1"
    target = DOC_IMAGES if regenerate and name in DOC_SHOTS else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    options = {"path": str(target / f"{name}.png"), "scale": "css", "animations": "disabled"}
    if part:
        page.locator(part).screenshot(**options)
    else:
        page.screenshot(**options)


def persist_audit_until(settings: Any, client: StrongroomClient, operation_id: str, action: str) -> None:
    """Ask the worker to persist the audit stream (beat does it every few seconds) until ``action`` is logged."""
    from api_service.services import CeleryProducer

    producer = CeleryProducer(settings)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            producer.send(PERSIST_AUDIT, {})
            if action in {str(e.get("action")) for e in client.access_log(operation_id).events}:
                return
            time.sleep(1)
    finally:
        producer.close()
    pytest.fail(f"{action} never reached the access log of {operation_id}")


# --- tests ----------------------------------------------------------------------------------------------------


def test_start_an_operation_from_the_page_and_watch_it_finish(
    page_api: str, celery_worker: Any, app: Any, viewport: str, grantee: tuple[Identity, Path], tmp_path: Path
) -> None:
    identity, identity_file = grantee
    page = app
    sign_in(page, page_api, identity_file, identity)
    expect(page.locator("#start")).to_be_visible()
    expect(page.locator("#start-agent option[value='privacy-audit']")).to_have_count(1)
    assert_no_horizontal_scroll(page, "identity loaded")
    screenshot(page, tmp_path, f"page-{viewport}-signed-in")

    page.select_option("#start-agent", "privacy-audit")
    page.fill("#start-text", SMALL_INPUT["text"])
    page.fill("#start-retention", "3")
    page.click("#start-submit")
    expect(page.locator("#op-title")).to_contain_text("privacy-audit_", timeout=SLOW)
    expect(page.locator("#op-title")).to_be_focused()
    operation_id = page.locator("#op-field-id").inner_text()
    expect(page).to_have_url(re.compile(f"#op={operation_id}$"))
    assert_no_horizontal_scroll(page, "operation started")

    expect_succeeded(page)  # watched: the page long-polls
    assert any(f"/operations/{operation_id}?wait=" in url for url in page.requests_seen)
    expect(page.locator("#op-running")).to_be_hidden()
    expect(page.locator("#op-result")).to_contain_text("ok")
    expect(page.locator("#op-elapsed")).to_contain_text(re.compile(r"^in \d"))
    expect(page.locator("#op-expires")).to_contain_text(re.compile(r"in [23] days|in \d+ hours"))
    expect(page.locator("#artifacts tbody tr")).to_have_count(2)
    expect(row(page, "privacy_audit.md").locator("button[data-action=download]")).to_have_attribute(
        "aria-label", "Download privacy_audit.md"
    )
    expect(page.locator(".error:visible")).to_have_count(0)
    assert_no_horizontal_scroll(page, "operation open with artifacts")

    with StrongroomClient(page_api, identity) as client:  # the page's create is an ordinary, retrievable one
        got = client.get(operation_id)
    assert got.status == "succeeded"
    listed = page.locator(f"#op-table button[data-op='{operation_id}']")
    expect(listed).to_be_visible(timeout=SLOW)
    # The list is re-read when the watched operation ends: its row must not keep saying "running".
    listed_row = page.locator("#op-table tbody tr", has=page.locator(f"button[data-op='{operation_id}']"))
    expect(listed_row.locator(".badge")).to_have_text("succeeded", timeout=SLOW)
    screenshot(page, tmp_path, f"page-{viewport}-operation", "#operation")


def test_download_shows_progress_on_a_throttled_network_cancel_and_restart(
    page_api: str,
    big_operation: GetOperationResponse,
    app: Any,
    viewport: str,
    grantee: tuple[Identity, Path],
    tmp_path: Path,
) -> None:
    identity, identity_file = grantee
    name = "privacy_audit.md"
    with StrongroomClient(page_api, identity) as client:
        client.download(big_operation.id, name, tmp_path / "sdk.md")
    expected = (tmp_path / "sdk.md").read_bytes()
    assert len(expected) > 200_000  # enough to be slow at the throttled rate below

    page = app
    downloads: list[Any] = []
    page.on("download", lambda download: downloads.append(download))
    sign_in(page, page_api, identity_file, identity)
    open_operation(page, big_operation.id)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    throttle = {"offline": False, "latency": 20, "downloadThroughput": 24 * 1024, "uploadThroughput": -1}
    cdp.send("Network.emulateNetworkConditions", throttle)

    the_row = row(page, name)
    expect(row(page, "recommendations.json").locator("progress")).to_be_hidden()  # no bar before a download
    the_row.locator("button[data-action=download]").click()
    status = the_row.locator(".row-status .text")
    expect(status).to_contain_text(re.compile(r"[1-9][0-9.]* KiB of [0-9.]+ (KiB|MiB) \(\d+%\)"), timeout=SLOW)
    expect(the_row.locator(".row-status progress")).to_be_visible()
    expect(the_row.locator("button[data-action=download]")).to_be_disabled()
    assert_no_horizontal_scroll(page, "download in progress")
    screenshot(page, tmp_path, f"page-{viewport}-downloading", "#artifacts-block")
    cancel = the_row.locator("button[data-action=cancel]")
    expect(cancel).to_have_attribute("aria-label", f"Cancel download of {name}")
    cancel.click()
    expect(status).to_have_text("Cancelled. Nothing was saved.")
    expect(the_row.locator("button[data-action=download]")).to_be_enabled()
    expect(cancel).to_be_hidden()
    assert downloads == []

    cdp.send("Network.emulateNetworkConditions", {**throttle, "latency": 0, "downloadThroughput": -1})
    with page.expect_download(timeout=SLOW) as info:
        the_row.locator("button[data-action=download]").click()
    assert info.value.suggested_filename == name
    assert Path(info.value.path()).read_bytes() == expected
    expect(status).to_contain_text("checksums verified")
    expect(page.locator(".error:visible")).to_have_count(0)


def test_delete_asks_for_a_confirmation_naming_the_artifact(
    page_api: str, celery_worker: Any, app: Any, viewport: str, grantee: tuple[Identity, Path]
) -> None:
    identity, identity_file = grantee
    done = finished(page_api, identity, SMALL_INPUT)
    name = "recommendations.json"
    page = app
    sign_in(page, page_api, identity_file, identity)
    open_operation(page, done.id)
    asked: list[str] = []

    def answer(dialog: Any, accept: bool) -> None:
        asked.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda dialog: answer(dialog, False))
    row(page, name).locator("button[data-action=delete]").click()
    expect(page.locator("#artifact-count")).to_have_text("(2)")
    assert len(asked) == 1 and name in asked[0] and done.id in asked[0]
    expect(row(page, name)).to_have_count(1)

    page.once("dialog", lambda dialog: answer(dialog, True))
    row(page, name).locator("button[data-action=delete]").click()
    expect(row(page, name)).to_have_count(0, timeout=SLOW)
    expect(page.locator("#artifact-count")).to_have_text("(1)")
    expect(page.locator("#notice")).to_have_text(f"{name} deleted.")
    with StrongroomClient(page_api, identity) as client:
        assert [a.name for a in client.artifacts(done.id).artifacts] == ["privacy_audit.md"]


def test_access_log_verifies_and_shows_a_tampered_log(
    page_api: str,
    celery_worker: Any,
    settings: Any,
    object_store: Any,
    app: Any,
    viewport: str,
    grantee: tuple[Identity, Path],
    tmp_path: Path,
) -> None:
    identity, identity_file = grantee
    done = finished(page_api, identity, SMALL_INPUT)
    with StrongroomClient(page_api, identity) as client:
        persist_audit_until(settings, client, done.id, "operation.read")
        client.download(done.id, "recommendations.json", tmp_path / "r.json")  # in a later batch: >= 2 batches
        persist_audit_until(settings, client, done.id, "artifact.url")

    page = app
    sign_in(page, page_api, identity_file, identity)
    open_operation(page, done.id)
    page.click("#log-load")
    verdict = page.locator("#log-verdict")
    expect(verdict).to_contain_text("hash chain verified on this device", timeout=SLOW)
    expect(verdict).not_to_have_class(re.compile("error"))
    expect(page.locator("#log-table tbody tr").first).to_be_visible()
    expect(page.locator("#log-table tbody")).to_contain_text("artifact.url")
    expect(page.locator("#log-table tbody")).to_contain_text("recommendations.json")
    assert_no_horizontal_scroll(page, "access log open")
    screenshot(page, tmp_path, f"page-{viewport}-access-log", "#access-log")

    # Answers rewritten on the way (a proxy, or a server that lies): the batches' bytes are changed, dropped or
    # reordered while ``chain_valid`` stays true and ``problems`` empty. The page recomputes the chain itself.
    served: list[dict[str, Any]] = []

    def rewritten(edit: Any) -> Any:
        def handler(route: Any) -> None:
            response = route.fetch()
            body = response.json()
            assert body["chain_valid"] is True and len(body["chain"]["batches"]) >= 2
            edit(body)
            served.append(body)
            route.fulfill(response=response, body=json.dumps(body))

        return handler

    def flip_byte(body: dict[str, Any]) -> None:
        first = body["chain"]["batches"][0]
        plaintext = bytearray(base64.b64decode(first["plaintext"]))
        plaintext[plaintext.index(b'"action":"') + 10] ^= 0x01  # one letter of an action
        first["plaintext"] = base64.b64encode(bytes(plaintext)).decode()

    def drop(body: dict[str, Any]) -> None:
        del body["chain"]["batches"][0]

    def reorder(body: dict[str, Any]) -> None:
        batches = body["chain"]["batches"]
        batches[0], batches[1] = batches[1], batches[0]

    def forged_events(body: dict[str, Any]) -> None:  # the bytes untouched: the server's own list is not shown
        body["events"] = [{**body["events"][0], "action": "artifact.delete", "artifact": "forged-by-the-server.txt"}]

    log_api = re.compile(r".*/access-log(\?.*)?$")
    cases = [
        (flip_byte, "batch 1 was changed: its bytes do not hash to its digest"),
        (drop, "batch 1 is missing (the next one served is batch 2)"),
        (reorder, "batch 1 is out of order"),
    ]
    for edit, failure in cases:
        page.route(log_api, rewritten(edit))
        page.click("#log-load")
        expect(verdict).to_contain_text("does NOT verify on this device", timeout=SLOW)
        expect(verdict).to_have_class(re.compile("error"))
        expect(page.locator("#log-problems")).to_contain_text(failure)
        expect(page.locator("#log-problems")).not_to_contain_text("server:")  # the server said all was well
        assert_no_horizontal_scroll(page, f"rewritten access log ({edit.__name__})")
        if edit is flip_byte:
            assert run_axe(page) == [], "rewritten access log shown"
            screenshot(page, tmp_path, f"page-{viewport}-access-log-rewritten", "#access-log")
        page.unroute(log_api)
    page.route(log_api, rewritten(forged_events))
    page.click("#log-load")
    expect(verdict).to_contain_text("hash chain verified on this device", timeout=SLOW)
    expect(page.locator("#log-table tbody")).to_contain_text("artifact.url")
    expect(page.locator("#log-table tbody")).not_to_contain_text("forged-by-the-server.txt")
    page.unroute(log_api)
    assert len(served) == len(cases) + 1

    # Someone with S3 write access removes the newest batch and head.json: the head kept in Redis still names it.
    newest = max(
        int(i.key.rsplit("/", 1)[1].removesuffix(".json"))
        for i in object_store.list(f"operations/{done.id}/access_log/")
        if not i.key.endswith("head.json")
    )
    object_store.delete(audit_log.batch_key(done.id, newest))
    object_store.delete(audit_log.head_key(done.id))
    page.click("#log-load")
    expect(verdict).to_contain_text("does NOT verify", timeout=SLOW)
    expect(verdict).to_have_class(re.compile("error"))
    expect(page.locator("#log-problems")).to_contain_text("tail removed")
    assert_no_horizontal_scroll(page, "tampered access log")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_no_violations_and_nothing_scrolls_sideways(
    page_api: str,
    big_operation: GetOperationResponse,
    app: Any,
    viewport: str,
    scheme: str,
    grantee: tuple[Identity, Path],
    tmp_path: Path,
) -> None:
    _, identity_file = grantee
    page = app
    page.emulate_media(color_scheme=scheme)
    page.goto(f"{page_api}/app/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    assert run_axe(page) == [], "no identity"
    assert_no_horizontal_scroll(page, "no identity")

    page.set_input_files("#identity-file", str(identity_file))
    expect(page.locator("#grant-status")).to_be_visible(timeout=SLOW)
    expect(page.locator("#op-table tbody tr").first).to_be_visible(timeout=SLOW)
    assert run_axe(page) == [], "identity loaded"
    assert_no_horizontal_scroll(page, "identity loaded")

    open_operation(page, big_operation.id)
    page.click("#log-load")
    expect(page.locator("#log-verdict")).to_be_visible(timeout=SLOW)
    row(page, "recommendations.json").locator("button[data-action=preview]").click()
    expect(page.locator("#preview pre")).to_be_visible(timeout=SLOW)
    assert run_axe(page) == [], "operation, access log and preview open"
    assert_no_horizontal_scroll(page, "operation, access log and preview open")

    page.fill("#op-id", "privacy-audit_aaaaaaaaaaaaaaaaaaaaaaaaaa")
    page.click("#op-open")
    expect(page.locator("#op-error")).to_be_visible(timeout=SLOW)
    expect(page.locator("#op-error")).to_be_focused()
    expect(page.locator("#op-details")).to_be_hidden()
    assert run_axe(page) == [], "error shown"
    assert_no_horizontal_scroll(page, "error shown")
    if scheme == "dark":
        screenshot(page, tmp_path, f"page-{viewport}-dark-error")


def test_the_page_catches_a_log_that_shrank_even_when_the_server_says_it_verifies(
    page_api: str, celery_worker: Any, settings: Any, app: Any, viewport: str, grantee: tuple[Identity, Path]
) -> None:
    """The grantee's device remembers the newest batch it verified, across reloads: a server (or a proxy in front of
    it) that later drops the newest batch, names the one before it as the head and still answers ``chain_valid:
    true`` serves a chain that is whole on its own, and is caught by the page itself."""
    identity, identity_file = grantee
    done = finished(page_api, identity, SMALL_INPUT)
    with StrongroomClient(page_api, identity) as client:
        persist_audit_until(settings, client, done.id, "operation.read")
    page = app
    sign_in(page, page_api, identity_file, identity)
    open_operation(page, done.id)
    log_api = re.compile(r".*/access-log(\?.*)?$")
    verified: list[int] = []  # the newest batch the page verified (the log may grow meanwhile: the page reads it)

    def honest(route: Any) -> None:
        response = route.fetch()
        verified.append(max(b["sequence"] for b in response.json()["chain"]["batches"]))
        route.fulfill(response=response)

    page.route(log_api, honest)
    page.click("#log-load")
    expect(page.locator("#log-verdict")).to_contain_text("hash chain verified on this device", timeout=SLOW)
    assert page.locator("#log-table tbody tr").count() >= 2
    page.unroute(log_api)
    # The memory outlives a reload (localStorage, per address): the lie below comes to a freshly loaded page.
    page.reload()
    sign_in(page, page_api, identity_file, identity)
    open_operation(page, done.id)

    def lying(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        chain = body["chain"]
        # From the newest batch the page verified on: cut, and the head moved back to the batch before it.
        chain["batches"] = [b for b in chain["batches"] if b["sequence"] < verified[-1]]
        kept = chain["batches"][-1] if chain["batches"] else None
        chain["head"] = chain["anchor"] = kept and {"sequence": kept["sequence"], "digest": kept["digest"]}
        body["events"] = [e for b in chain["batches"] for e in json.loads(base64.b64decode(b["plaintext"]))["events"]]
        route.fulfill(response=response, body=json.dumps(body))

    page.route(log_api, lying)
    page.click("#log-load")
    expect(page.locator("#log-verdict")).to_contain_text("does NOT verify", timeout=SLOW)
    expect(page.locator("#log-problems")).to_contain_text(f"this device verified batch {verified[-1]} before")
    expect(page.locator("#log-problems")).to_contain_text("the log was cut")
    expect(page.locator("#log-problems")).not_to_contain_text("server:")
    assert_no_horizontal_scroll(page, "log that shrank")
    remembered = f"strongroom.log-seen.{identity.address.lower()}"
    assert page.evaluate("(key) => localStorage.getItem(key)", remembered)
    page.click("#identity-forget")  # forgetting the identity forgets what this device verified for it
    assert page.evaluate("(key) => localStorage.getItem(key)", remembered) is None


@pytest.fixture(scope="module")
def static_grants_api(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Identity, Path, Identity, Path]]:
    """An API whose grants file names one identity (privacy-audit, 30 days, quotas) and not the other."""
    from api_service.app import create_app
    from shared.settings import Settings
    from tests.browser.conftest import serving
    from tests.helpers.ports import free_port

    folder = tmp_path_factory.mktemp("grants")
    granted = create_identity(folder / "granted.json")
    stranger = create_identity(folder / "stranger.json")
    until = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    grants = {
        "version": 1,
        "grants": [
            {
                "address": granted.address,
                "agents": ["privacy-audit"],
                "expires_at": until,
                "max_retention_days": 3,
                "quotas": {"concurrent_operations": 2, "operations_per_hour": 5, "stored_bytes": 10485760},
            }
        ],
    }
    (folder / "grants.json").write_text(json.dumps(grants))
    port = free_port()
    env = {
        **stack_env,
        "STRONGROOM_API_HOST": "127.0.0.1",
        "STRONGROOM_API_PORT": str(port),
        "STRONGROOM_GRANTS_SOURCE": "static",
        "STRONGROOM_GRANTS_FILE": str(folder / "grants.json"),
    }
    with serving(create_app(Settings.from_env(env)), port) as url:
        yield url, granted, folder / "granted.json", stranger, folder / "stranger.json"


def test_the_grant_panel_says_what_may_run_until_when_and_the_quota_usage(
    static_grants_api: tuple[str, Identity, Path, Identity, Path], app: Any, viewport: str, tmp_path: Path
) -> None:
    url, granted, granted_file, _, _ = static_grants_api
    page = app
    sign_in(page, url, granted_file, granted)
    panel = page.locator("#grant")
    expect(panel).to_be_visible(timeout=SLOW)
    expect(page.locator("#grant-status")).to_contain_text("You may run privacy-audit until")
    facts = page.locator("#grant-facts")
    expect(facts).to_contain_text("in 29 days")
    expect(facts).to_contain_text("up to 3 days")
    expect(facts).to_contain_text("0 of 2")  # running
    expect(facts).to_contain_text("0 of 5")  # started in the last hour
    expect(facts).to_contain_text("0 B of 10.0 MiB")
    expect(page.locator("#start-retention")).to_have_attribute("max", "3")
    expect(page.locator("#start-submit")).to_be_enabled()
    assert_no_horizontal_scroll(page, "grant shown")
    screenshot(page, tmp_path, f"page-{viewport}-grant", "#identity")


def test_an_identity_without_a_grant_is_told_in_plain_words(
    static_grants_api: tuple[str, Identity, Path, Identity, Path], app: Any, viewport: str
) -> None:
    url, _, _, stranger, stranger_file = static_grants_api
    page = app
    sign_in(page, url, stranger_file, stranger)
    status = page.locator("#grant-status")
    expect(status).to_contain_text(f"has not granted {stranger.address} anything", timeout=SLOW)
    expect(status).not_to_contain_text("no_grant")
    expect(page.locator("#start-blocked")).to_contain_text("Ask the operator")
    expect(page.locator("#start-submit")).to_be_disabled()
    # The server's 403 no_grant, should the page try anyway (an older page, a grant removed meanwhile): words.
    page.evaluate("document.getElementById('start-submit').disabled = false")
    page.fill("#start-text", "hello")
    page.click("#start-submit")
    error = page.locator("#start-error")
    expect(error).to_contain_text("has no grant on this server", timeout=SLOW)
    expect(error).not_to_contain_text("no_grant")
    expect(error).to_be_focused()
    assert_no_horizontal_scroll(page, "no grant")


class CutShortStorage:
    """A local stand-in for storage that promises the whole object (``Content-Length``) but closes the connection
    after ``cut`` bytes: what a dropped mobile connection looks like to the page. It closes only once ``release``
    is set (the test sets it when the page shows progress), so the page has surely read those bytes."""

    def __init__(self, body: bytes, origin: str, cut: int, first: int = 0) -> None:
        import http.server
        import threading
        import time

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Access-Control-Allow-Origin", origin)
                self.end_headers()
                # With ``first``: a small piece, a pause the page surely redraws in, another small piece, and 20 ms
                # later the rest up to ``cut`` (too soon for a redraw of its own). Without: up to ``cut`` at once.
                first = outer.first
                for piece, pause in ((body[:first], 0.3), (body[first : 2 * first], 0.02), (body[2 * first : cut], 0)):
                    self.wfile.write(piece)
                    self.wfile.flush()
                    time.sleep(pause if first else 0)
                outer.release.wait(timeout=300)
                self.close_connection = True
                outer.served += 1

            def log_message(self, *args: Any) -> None:
                pass

        self.served = 0
        self.first = first
        self.release = threading.Event()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cut"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_start_waits_for_the_agent_list(app: Any, page_api: str, viewport: str, grantee: tuple[Identity, Path]) -> None:
    """Start is disabled until the agent list has arrived, so a quick click never reaches "choose an agent"."""
    identity, identity_file = grantee
    page = app
    held: list[Any] = []  # the agent list's request, answered only once the page was checked without it
    page.route(re.compile(r".*/api/v1/agents$"), lambda route: held.append(route))
    sign_in(page, page_api, identity_file, identity)
    expect(page.locator("#start")).to_be_visible()
    page.wait_for_function("() => true")  # one round trip to the page: the held request has surely been routed
    assert len(held) == 1
    expect(page.locator("#start-submit")).to_be_disabled()
    held[0].continue_()
    expect(page.locator("#start-submit")).to_be_enabled(timeout=SLOW)
    expect(page.locator("#start-error")).to_be_hidden()


def test_progress_shows_the_last_bytes_received_when_the_stream_stalls(
    page_api: str,
    big_operation: GetOperationResponse,
    object_store: Any,
    app: Any,
    viewport: str,
    grantee: tuple[Identity, Path],
) -> None:
    """Progress is redrawn at most ten times a second, but the bytes that came just after a redraw are still shown
    when the connection then stalls: storage sends 1 KiB, then another, 20 ms later the rest up to 90 %, then
    nothing."""
    from tests.browser.test_page_download import stored_key

    identity, identity_file = grantee
    name = "privacy_audit.md"
    ciphertext = object_store.get_bytes(stored_key(object_store, big_operation.id, name))
    cut = len(ciphertext) * 9 // 10
    held = CutShortStorage(ciphertext, page_api, cut=cut, first=1024)
    page = app
    try:
        sign_in(page, page_api, identity_file, identity)
        open_operation(page, big_operation.id)
        page.route(re.compile(r".*\.enc\?.*X-Amz-Signature=.*"), lambda route: route.continue_(url=held.url))
        row(page, name).locator("button[data-action=download]").click()
        progress = row(page, name).locator("progress")
        expect(progress).to_have_attribute("value", str(cut * 100 // len(ciphertext)), timeout=SLOW)
        expect(row(page, name).locator(".row-status .text")).to_contain_text(f"({cut * 100 // len(ciphertext)}%)")
        row(page, name).locator("button[data-action=cancel]").click()
    finally:
        held.close()


# Desktop only: its pauses (1 + 2 + 4 s) make it the slowest test here; test_page_savefile.py resumes at both
# sizes, and the download row it shows is the one the throttled-download test shows at both.
@pytest.mark.parametrize("viewport", ["desktop"])
def test_a_download_cut_mid_way_resumes_with_a_fresh_link_and_a_range_request(
    page_api: str,
    big_operation: GetOperationResponse,
    object_store: Any,
    app: Any,
    viewport: str,
    grantee: tuple[Identity, Path],
    tmp_path: Path,
) -> None:
    """The connection breaks in the middle of a download, the network is still gone at the first retry, then the
    link has expired (403): the page pauses, asks for a fresh link and continues with ``Range: bytes=<received>-``
    from where it stopped, instead of starting over or giving up."""
    from tests.browser.test_page_download import stored_key

    identity, identity_file = grantee
    name = "privacy_audit.md"
    with StrongroomClient(page_api, identity) as client:
        client.download(big_operation.id, name, tmp_path / "sdk.md")
    ciphertext = object_store.get_bytes(stored_key(object_store, big_operation.id, name))
    cut = CutShortStorage(ciphertext, page_api, cut=96 * 1024)
    seen: list[dict[str, str]] = []

    def storage(route: Any) -> None:
        seen.append({"url": route.request.url, "range": route.request.headers.get("range", "")})
        if len(seen) == 1:
            route.continue_(url=cut.url)  # the connection breaks after 96 KiB
        elif len(seen) == 2:  # the network is still gone at the first try
            route.abort("internetdisconnected")
        elif len(seen) == 3:  # then the link has expired
            route.fulfill(status=403, headers={"access-control-allow-origin": page_api}, body="AccessDenied")
        else:
            route.continue_()

    page = app
    downloads: list[Any] = []
    page.on("download", lambda download: downloads.append(download))
    try:
        sign_in(page, page_api, identity_file, identity)
        open_operation(page, big_operation.id)
        page.route(re.compile(r".*\.enc\?.*X-Amz-Signature=.*"), storage)
        status = row(page, name).locator(".row-status .text")
        row(page, name).locator("button[data-action=download]").click()
        expect(status).to_contain_text(re.compile(r"[1-9][0-9.]* KiB of"), timeout=SLOW)
        cut.release.set()
        expect(status).to_contain_text("checksums verified", timeout=SLOW)
    finally:
        cut.close()
    assert cut.served == 1
    assert len(downloads) == 1
    assert Path(downloads[0].path()).read_bytes() == (tmp_path / "sdk.md").read_bytes()
    assert len(seen) == 4, seen
    assert [s["range"] for s in seen[1:]] == [seen[1]["range"]] * 3
    assert seen[0]["range"] == "" and re.fullmatch(r"bytes=[1-9]\d*-", seen[1]["range"]), seen
    assert len({s["url"] for s in seen}) == 4  # each try with a fresh presigned link
    expect(page.locator(".error:visible")).to_have_count(0)


def test_preview_shows_text_as_text_and_json_pretty_printed(
    page_api: str,
    big_operation: GetOperationResponse,
    app: Any,
    viewport: str,
    grantee: tuple[Identity, Path],
    tmp_path: Path,
) -> None:
    identity, identity_file = grantee
    with StrongroomClient(page_api, identity) as client:
        client.download(big_operation.id, "recommendations.json", tmp_path / "r.json")
        client.download(big_operation.id, "privacy_audit.md", tmp_path / "p.md")
    page = app
    sign_in(page, page_api, identity_file, identity)
    open_operation(page, big_operation.id)

    row(page, "recommendations.json").locator("button[data-action=preview]").click()
    shown = page.locator("#preview pre")
    expect(shown).to_be_visible(timeout=SLOW)
    expect(page.locator("#preview-title")).to_have_text("Preview: recommendations.json")
    expect(page.locator("#preview-title")).to_be_focused()
    pretty = json.dumps(json.loads((tmp_path / "r.json").read_text(encoding="utf-8")), indent=2, ensure_ascii=False)
    assert shown.inner_text() == pretty

    row(page, "privacy_audit.md").locator("button[data-action=preview]").click()
    expect(page.locator("#preview-title")).to_have_text("Preview: privacy_audit.md", timeout=SLOW)
    text = (tmp_path / "p.md").read_text(encoding="utf-8")
    assert len(text.encode()) > 256 * 1024
    assert text.startswith(shown.inner_text()[:1000])  # as text: Markdown is not rendered
    expect(page.locator("#preview-body")).to_contain_text("First 256.0 KiB shown.")
    assert page.locator("#preview-body *").evaluate_all("nodes => nodes.map(n => n.tagName)") == ["PRE", "P"]
    assert_no_horizontal_scroll(page, "preview open")
    page.click("#preview-close")
    expect(page.locator("#preview")).to_be_hidden()


class DerivedKeyOnlyWallet:
    """An EIP-1193 provider that only signs (no eth_decrypt, no eth_getEncryptionPublicKey): every key the page
    uses must come from the wallet-derived key."""

    def __init__(self, identity: Identity) -> None:
        from tests.browser.test_page_download import FakeWallet

        self.inner = FakeWallet(identity)
        self.calls: list[str] = []

    def request(self, method: str, params: list[Any]) -> Any:
        self.calls.append(method)
        if method not in {"eth_requestAccounts", "personal_sign"}:
            raise RuntimeError(f"{method} is not supported")
        return self.inner.request(method, params)


def test_a_wallet_user_starts_and_downloads_with_the_key_derived_from_a_signature(
    page_api: str, celery_worker: Any, app: Any, viewport: str, tmp_path: Path
) -> None:
    """The page derives the X25519 key from the wallet's signature of the key message; the operation it starts
    is sealed for that key, and the SDK, deriving from the same private key, opens the same artifacts."""
    from strongroom.client.walletkey import derive_from_signer

    identity = create_identity(tmp_path / "wallet.json")  # only its signing key plays the wallet
    wallet = DerivedKeyOnlyWallet(identity)
    page = app
    page.expose_function("__walletRequest", wallet.request)
    page.add_init_script(
        "window.ethereum = { request: ({ method, params }) => window.__walletRequest(method, params ?? []) };"
    )
    page.goto(f"{page_api}/app/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.click("#wallet-connect")
    expect(page.locator("#identity-status")).to_contain_text(f"{identity.address} (browser wallet, key derived")
    page.fill("#start-text", SMALL_INPUT["text"])
    page.click("#start-submit")
    expect_succeeded(page)
    operation_id = page.locator("#op-field-id").inner_text()
    name = "recommendations.json"
    with page.expect_download(timeout=SLOW) as info:
        row(page, name).locator("button[data-action=download]").click()
    assert wallet.calls.count("personal_sign") >= 3  # the key message twice, then requests
    assert "eth_decrypt" not in wallet.calls and "eth_getEncryptionPublicKey" not in wallet.calls

    derived = derive_from_signer(identity.account)
    as_sdk = Identity(identity.account, derived.secret, derived.public_key)
    with StrongroomClient(page_api, as_sdk) as client:
        client.download(operation_id, name, tmp_path / "sdk.json")
    assert Path(info.value.path()).read_bytes() == (tmp_path / "sdk.json").read_bytes()


def test_the_page_is_usable_by_keyboard_alone_with_visible_focus(
    page_api: str,
    big_operation: GetOperationResponse,
    app: Any,
    viewport: str,
    grantee: tuple[Identity, Path],
    tmp_path: Path,
) -> None:
    identity, identity_file = grantee
    page = app
    page.goto(f"{page_api}/app/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.keyboard.press("Tab")  # the first stop is the visible button, not the hidden file input
    expect(page.locator("#identity-pick")).to_be_focused()
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"
    # Enter on the button opens the file input (a native chooser, which headless Chromium does not always show
    # when several pages ran before: the click on the input is what the page controls, so that is checked).
    page.evaluate(
        "() => document.getElementById('identity-file').addEventListener('click', () => { window.picked = true; })"
    )
    page.keyboard.press("Enter")
    assert page.evaluate("() => window.picked === true")
    page.set_input_files("#identity-file", str(identity_file))
    expect(page.locator("#identity-status")).to_contain_text(identity.address)

    page.focus("#op-id")
    page.keyboard.type(big_operation.id)
    page.keyboard.press("Enter")
    expect_succeeded(page)
    expect(page.locator("#op-title")).to_be_focused()
    download = row(page, "recommendations.json").locator("button[data-action=download]")
    for _ in range(60):  # Tab from the heading to the artifact's Download button
        page.keyboard.press("Tab")
        if download.evaluate("node => node === document.activeElement"):
            break
    expect(download).to_be_focused()
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    with page.expect_download(timeout=SLOW) as info:
        page.keyboard.press("Enter")
    assert info.value.suggested_filename == "recommendations.json"
