"""A user's whole session, as subprocesses: `strongroom dev`, then `strongroom client ...` commands.

keygen -> create privacy-audit -> wait -> ls -> get (download, verify, decrypt) -> compare checksums -> rm ->
log (hash chain verified). Only public interfaces are used: the command line, its exit codes and its --json output.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from strongroom.dev.servers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def dev_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("dev")
    port = free_port()
    log = (data / "dev.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "strongroom", "dev", "--data-dir", str(data / "state"), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopping it stops its children too
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"strongroom dev did not start:\n{(data / 'dev.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class Cli:
    def __init__(self, api: str, home: Path) -> None:
        self.env = {
            **os.environ,
            "STRONGROOM_API_URL": api,
            "STRONGROOM_IDENTITY": str(home / "identity.json"),
        }
        self.cwd = home

    def __call__(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "strongroom", "client", *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == expect, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self("--json", *args).stdout)


def test_cli_session(dev_api: str, tmp_path: Path) -> None:
    cli = Cli(dev_api, tmp_path)
    keys = cli.json("keygen")
    identity = tmp_path / "identity.json"
    assert stat.S_IMODE(identity.stat().st_mode) == 0o600
    assert keys["address"].startswith("0x")
    assert json.loads(identity.read_text())["encryption_secret_key"] not in json.dumps(keys)

    (tmp_path / "customers.csv").write_text("name,email\nJane Doe,jane.doe@example.com\n")
    created = cli.json(
        "create", "--agent", "privacy-audit", "--text", "call +1 415 555 0100", "--file", "customers.csv"
    )
    op_id = created["id"]
    assert created["status"] == "pending"

    done = cli.json("wait", op_id, "--timeout", "120")
    assert done["status"] == "succeeded"
    metadata = {a["name"]: a for a in done["artifacts"]["artifacts"]}
    assert set(metadata) == {"privacy_audit.md", "recommendations.json"}

    assert op_id in [row["id"] for row in cli.json("ls")["operations"]]
    assert op_id in cli("ls", "--status", "succeeded").stdout

    fetched = cli.json("get", op_id, "-o", "out")["artifacts"]
    assert {f["name"] for f in fetched} == set(metadata)
    for name, meta in metadata.items():
        data = (tmp_path / "out" / name).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == meta["checksum"]
        assert len(data) == meta["size"]
    assert "jane.doe@example.com" not in (tmp_path / "out" / "privacy_audit.md").read_text()

    cli("rm", op_id, "recommendations.json")
    assert [a["name"] for a in cli.json("status", op_id)["artifacts"]["artifacts"]] == ["privacy_audit.md"]
    gone = cli("get", op_id, "recommendations.json", "-o", "again", expect=5)
    assert gone.stderr.startswith("error: ") and "recommendations.json" in gone.stderr
    assert cli("cancel", op_id, expect=6).stderr.startswith("error: ")

    deadline = time.monotonic() + 60  # the audit persister runs every few seconds
    while True:
        log = cli.json("log", op_id)
        actions = {e["action"] for e in log["events"]}
        if {"operation.create", "artifact.delete"} <= actions or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {"operation.create", "operation.finished", "artifact.url", "artifact.delete"} <= actions
    assert log["chain_verified"] is True
    assert "hash chain verified" in cli("log", op_id).stdout
