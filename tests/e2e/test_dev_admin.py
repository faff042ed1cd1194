"""The admin commands against a running `strongroom dev`, with nothing exported: they read the connection
settings dev wrote into its data dir (strongroom.connection)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from strongroom.dev.servers import wait_for
from tests.e2e.devstack import DevStack, clean_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def strongroom(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "strongroom", *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def verified(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    assert report["ok"] is True and report["problems"] == []
    return report


def test_the_connection_file_is_private_and_never_shown(dev_stack: DevStack) -> None:
    path = dev_stack.data_dir / "connection.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    secret = json.loads((dev_stack.data_dir / "s3-credentials.json").read_text())["secret_key"]
    assert secret not in path.read_text()
    console = dev_stack.dev.process.logs()
    assert secret not in console
    assert document["env"]["REDIS_URL"].startswith("redis://127.0.0.1:")


def test_audit_verify_in_the_project_directory_needs_no_exports(dev_stack: DevStack) -> None:
    below = dev_stack.home / "src" / "deeper"
    below.mkdir(parents=True, exist_ok=True)

    def persisted() -> bool:  # the worker persists access-log events every few seconds
        result = strongroom("audit", "verify", dev_stack.operation, cwd=below)
        return int(verified(result)["events"]) > 0  # type: ignore[call-overload]

    wait_for(persisted, timeout=60, what="the operation's access log in S3")
    verified(strongroom("audit", "verify", "global", cwd=dev_stack.home))


def test_admin_commands_elsewhere_with_data_dir(dev_stack: DevStack, tmp_path: Path) -> None:
    data_dir = str(dev_stack.data_dir)
    verified(strongroom("audit", "verify", dev_stack.operation, "--data-dir", data_dir, cwd=tmp_path))
    usage = strongroom("keys", "usage", "--data-dir", data_dir, cwd=tmp_path)
    assert usage.returncode == 0, usage.stderr
    primary = json.loads(usage.stdout)["primary"]
    assert json.loads(usage.stdout)["usage"].get(primary, 0) > 0  # the operation's sealed record, at least
    reencrypt = strongroom("keys", "reencrypt", "--data-dir", data_dir, cwd=tmp_path)
    assert reencrypt.returncode == 0 and json.loads(reencrypt.stdout)["complete"] is True, reencrypt.stderr
    in_use = strongroom("keys", "check-remove", primary, "--data-dir", data_dir, cwd=tmp_path)
    assert in_use.returncode == 1 and "Traceback" not in in_use.stderr  # the primary key is never removable


def test_without_data_dir_and_outside_the_project_nothing_is_guessed(dev_stack: DevStack, tmp_path: Path) -> None:
    result = strongroom("audit", "verify", dev_stack.operation, cwd=tmp_path)
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr and "Traceback" not in result.stderr


def test_the_banner_commands_work_as_printed(dev_stack: DevStack, tmp_path: Path) -> None:
    """Each command dev prints once ready runs as printed in dev's directory, from a shell with nothing set up
    (a HOME of its own, the PATH of the test, which does not hold the venv's bin)."""
    console = dev_stack.dev.process.logs()
    banner = console[console.index("next, in another terminal") :].splitlines()[1:]
    commands = [line.strip() for line in banner if line.startswith("    ")]
    assert any("client keygen" in c for c in commands) and any("audit verify" in c for c in commands)
    home = tmp_path / "home"
    home.mkdir()
    for command in commands:
        typed = command.replace("<operation-id>", dev_stack.operation)
        result = subprocess.run(
            ["bash", "-c", typed], cwd=dev_stack.home, env=clean_env(HOME=str(home)), capture_output=True, text=True
        )
        assert result.returncode == 0, f"{typed}\n{result.stderr}"
    hints = [line for line in banner if "activate" in line]
    for hint in hints:  # "(or run `. PATH/activate` once, then type plain `strongroom ...`)"
        activate = hint.split("`")[1]
        result = subprocess.run(
            ["bash", "-c", f"{activate} && strongroom client --help"],
            cwd=dev_stack.home,
            env=clean_env(HOME=str(home)),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
