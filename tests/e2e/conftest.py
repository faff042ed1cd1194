"""One `strongroom dev` for the tests that only need it running (admin commands, the documented commands).

It runs as a user starts it: console log format, nothing configured, its data dir the ``.strongroom`` folder of
a project directory (``home``), so commands run in ``home`` find it the way they find ``make dev``'s stack.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from strongroom.client.identity import create_identity
from strongroom.client.sdk import StrongroomClient
from tests.e2e.devstack import Dev, DevStack, clean_env
from tests.helpers.ports import free_port


@pytest.fixture(scope="session")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    home = tmp_path_factory.mktemp("project")
    dev = Dev(home / ".strongroom", free_port(), home / "dev.log", env=clean_env(), cwd=home)
    try:
        dev.start()
        identity_path = home / "identity.json"
        identity = create_identity(identity_path)
        with StrongroomClient(dev.url, identity) as client:
            created = client.create("privacy-audit", {"text": "write to alice@example.com"})
            assert client.wait(created.id, timeout=120, initial_interval=0.2).status == "succeeded"
        yield DevStack(dev, home, identity_path, created.id)
        dev.interrupt()
    finally:
        dev.process.stop()
