"""The connection file `strongroom dev` writes, and how the admin commands use it (strongroom.dev.connection).

End to end against a running dev stack: tests/e2e/test_dev_admin.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from shared.crypto.keyring import Keyring
from shared.errors import ConfigError
from strongroom.cli import main
from strongroom.dev import connection

pytestmark = pytest.mark.unit

SECRET = "s3-secret-that-must-stay-in-its-own-file"


def dev_dir(root: Path, *, pid: int | None = None) -> Path:
    """A data dir as a running dev leaves it: connection.json, the S3 credentials and a keyring."""
    data = root / ".strongroom"
    credentials = data / "s3-credentials.json"
    data.mkdir(parents=True)
    credentials.write_text(json.dumps({"access_key": "SRKEY", "secret_key": SECRET}))
    (data / "keyring.json").write_text(Keyring.generate_json("k1"))
    env = {
        "STRONGROOM_ENV": "development",
        "REDIS_URL": "redis://127.0.0.1:7001/0",
        "STRONGROOM_S3_ENDPOINT_URL": "http://127.0.0.1:7002",
        "STRONGROOM_KEYRING_FILE": str(data / "keyring.json"),
        "AWS_SECRET_ACCESS_KEY": SECRET,  # in dev's environment, never in the file
        "STRONGROOM_KEYRING": "inline keyrings are never written either",
    }
    connection.write(data, env, api_url="http://127.0.0.1:8080", credentials_file=credentials)
    if pid is not None:
        document = json.loads((data / connection.FILE_NAME).read_text())
        document["pid"] = pid
        (data / connection.FILE_NAME).write_text(json.dumps(document))
    return data


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_file_is_private_and_holds_no_secret(tmp_path: Path) -> None:
    data = dev_dir(tmp_path)
    path = data / connection.FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert SECRET not in text and "inline keyrings" not in text
    document = json.loads(text)
    assert document["pid"] == os.getpid()
    assert document["s3_credentials_file"] == str(data / "s3-credentials.json")


def test_found_from_a_subdirectory_and_filled_in_when_nothing_is_configured(tmp_path: Path) -> None:
    data = dev_dir(tmp_path)
    below = tmp_path / "a" / "b"
    below.mkdir(parents=True)
    environ = connection.admin_environ(None, {"PATH": "/usr/bin"}, below)
    assert environ["REDIS_URL"] == "redis://127.0.0.1:7001/0"
    assert environ["STRONGROOM_S3_ENDPOINT_URL"] == "http://127.0.0.1:7002"
    assert environ["AWS_ACCESS_KEY_ID"] == "SRKEY" and environ["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert environ["STRONGROOM_KEYRING_FILE"] == str(data / "keyring.json")
    assert environ["PATH"] == "/usr/bin"


def test_a_configured_shell_is_never_mixed_with_a_dev_stack(tmp_path: Path) -> None:
    dev_dir(tmp_path)
    configured = {"REDIS_URL": "redis://prod:6379/0"}  # S3 endpoint empty = AWS: must not become dev's
    assert connection.admin_environ(None, configured, tmp_path) == configured


def test_with_data_dir_explicit_variables_win(tmp_path: Path) -> None:
    data = dev_dir(tmp_path)
    environ = connection.admin_environ(
        str(data), {"REDIS_URL": "redis://elsewhere:6379/1", "AWS_REGION": ""}, Path("/")
    )
    assert environ["REDIS_URL"] == "redis://elsewhere:6379/1"
    assert environ["STRONGROOM_S3_ENDPOINT_URL"] == "http://127.0.0.1:7002"  # not set: from the file


def test_nothing_found_leaves_the_environment_alone(tmp_path: Path) -> None:
    assert connection.admin_environ(None, {"X": "1"}, tmp_path) == {"X": "1"}


def test_a_stopped_dev_is_named_not_mistaken_for_a_configuration_gap(tmp_path: Path) -> None:
    data = dev_dir(tmp_path, pid=dead_pid())
    with pytest.raises(ConfigError, match="not running"):
        connection.admin_environ(None, {}, tmp_path)
    with pytest.raises(ConfigError, match="not running"):
        connection.admin_environ(str(data), {}, tmp_path)
    # Rotating a keyring file needs no running server.
    assert connection.admin_environ(str(data), {}, tmp_path, require_running=False)["STRONGROOM_KEYRING_FILE"]


def test_admin_command_against_a_stopped_dev_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in connection.CONNECTION_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    dev_dir(tmp_path, pid=dead_pid())
    monkeypatch.chdir(tmp_path)
    assert main(["audit", "verify", "global"]) == 2
    err = capsys.readouterr().err
    assert "strongroom dev is not running" in err and "Traceback" not in err
    assert main(["audit", "verify", "global", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "no connection.json" in capsys.readouterr().err


def test_keyring_rotate_defaults_to_the_dev_keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in connection.CONNECTION_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    data = dev_dir(tmp_path, pid=dead_pid())
    monkeypatch.chdir(tmp_path)
    assert main(["keyring", "rotate"]) == 0
    rotated = Keyring.from_json((data / "keyring.json").read_text())
    assert rotated.primary_id != "k1" and "k1" in rotated.key_ids


def test_keyring_rotate_without_a_file_or_a_dev_stack_asks_for_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in connection.CONNECTION_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["keyring", "rotate"]) == 2
    assert "name the keyring file" in capsys.readouterr().err
