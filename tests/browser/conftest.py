"""Fixtures for the browser page tests: the API (with the page) on the CORS-allowed origin, and Chromium.

The bucket's CORS rule allows ``page_origin`` (tests/conftest.py), so the API that serves the page runs there:
a real uvicorn serving ``create_app`` in a thread of this process, with ``api_service.endpoints.page.routes``
appended unless the route table already carries them. Workers are the session's real Celery subprocesses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@contextmanager
def serving(app: Any, port: int) -> Iterator[str]:
    """Run ``app`` under a real uvicorn in a daemon thread on 127.0.0.1:``port`` until the block ends."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail(f"uvicorn on port {port} did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def page_api(stack_env: dict[str, str], page_origin: str) -> Iterator[str]:
    """Base URL of the full API serving /app/ on ``page_origin``; stopped at session end."""
    from api_service.app import create_app
    from shared.settings import Settings

    port = urlsplit(page_origin).port
    assert port is not None
    settings = Settings.from_env({**stack_env, "STRONGROOM_API_HOST": "127.0.0.1", "STRONGROOM_API_PORT": str(port)})
    with serving(create_app(settings), port) as url:
        yield url


@pytest.fixture(scope="session")
def proxy_page_api(stack_env: dict[str, str]) -> Iterator[str]:
    """The same API in proxy delivery mode: the page fetches ciphertext through the API, not from S3."""
    from api_service.app import create_app
    from shared.settings import Settings
    from tests.helpers.ports import free_port

    port = free_port()
    settings = Settings.from_env(
        {
            **stack_env,
            "STRONGROOM_API_HOST": "127.0.0.1",
            "STRONGROOM_API_PORT": str(port),
            "STRONGROOM_DELIVERY_MODE": "proxy",
        }
    )
    with serving(create_app(settings), port) as url:
        yield url


@pytest.fixture(scope="session")
def static_page() -> Iterator[str]:
    """Only the page's routes (no Redis, no S3): enough to run its modules in Chromium."""
    from starlette.applications import Starlette

    from api_service.endpoints import page
    from shared.crypto.keyring import Keyring
    from shared.settings import Settings
    from tests.helpers.ports import free_port

    app = Starlette(routes=page.routes)
    app.state.settings = Settings.from_env(
        {"REDIS_URL": "redis://127.0.0.1:1/0", "STRONGROOM_KEYRING": Keyring.generate_json()}
    )
    with serving(app, free_port()) as url:
        yield url


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Module-scoped: Playwright's sync API keeps an event loop running in this thread while it is open, which
    would break every later test that calls ``asyncio.run``."""
    import os
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: a skip there would hide a broken install step
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# Headless Chromium has the File System Access API but no dialog: showSaveFilePicker always answers AbortError
# ("the user closed it"). Pages start without it, as in Firefox and Safari, so downloads take the in-memory path;
# tests/browser/test_page_savefile.py puts back a picker that answers with a real file.
NO_SAVE_PICKER = "delete window.showSaveFilePicker;"


@pytest.fixture
def browser_page(chromium: Any) -> Iterator[Any]:
    """A fresh context per test (no shared storage), downloads enabled, no save dialog (NO_SAVE_PICKER); console
    output is collected."""
    context = chromium.new_context(accept_downloads=True)
    context.add_init_script(NO_SAVE_PICKER)
    page = context.new_page()
    page.console_messages_seen = []
    page.on("console", lambda message: page.console_messages_seen.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: page.console_messages_seen.append(f"pageerror: {error}"))
    try:
        yield page
    finally:
        context.close()
