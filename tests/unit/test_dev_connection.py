"""The connection file `strongroom dev` writes, and how the admin commands use it (strongroom.connection).

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
from strongroom import connection
from strongroom.cli import main

pytestmark = pytest.mark.unit

SECRET = "s3-secret-that-must-stay-in-its-own-file"


RUNNING: list[connection.Published] = []  # dev stacks "running" for the test session (their locks held)


def dev_dir(root: Path, *, running: bool = True) -> Path:
    """A data dir as dev leaves it: connection.json, the S3 credentials and a keyring; ``running=False``: as a dev
    that crashed leaves it (its file written by a process that exited without removing it)."""
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
    if running:
        RUNNING.append(connection.write(data, env, api_url="http://127.0.0.1:8080", credentials_file=credentials))
        return data
    crashed = (
        "import json, sys; from pathlib import Path; from strongroom import connection; "
        "connection.write(Path(sys.argv[1]), json.loads(sys.argv[2]), api_url='http://127.0.0.1:8080', "
        "credentials_file=Path(sys.argv[3]))"
    )
    subprocess.run([sys.executable, "-c", crashed, str(data), json.dumps(env), str(credentials)], check=True)
    return data


def test_the_file_is_private_and_holds_no_secret(tmp_path: Path) -> None:
    data = dev_dir(tmp_path)
    path = data / connection.FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert SECRET not in text and "inline keyrings" not in text
    document = json.loads(text)
    assert document["pid"] == os.getpid()  # for people; whether dev runs is its lock on the file
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


def test_with_data_dir_a_configured_shell_is_refused_not_mixed(tmp_path: Path) -> None:
    data = dev_dir(tmp_path)
    with pytest.raises(ConfigError, match="cannot be combined with REDIS_URL"):
        connection.admin_environ(str(data), {"REDIS_URL": "redis://elsewhere:6379/1"}, Path("/"))
    environ = connection.admin_environ(str(data), {"AWS_REGION": "", "STRONGROOM_LOG_LEVEL": "DEBUG"}, Path("/"))
    assert environ["STRONGROOM_S3_ENDPOINT_URL"] == "http://127.0.0.1:7002"
    assert environ["STRONGROOM_LOG_LEVEL"] == "DEBUG"  # not a connection setting: the shell's


def test_the_shells_aws_keys_never_go_to_the_dev_stack(tmp_path: Path) -> None:
    dev_dir(tmp_path)
    shell = {"AWS_ACCESS_KEY_ID": "AKIAREALKEY", "AWS_SECRET_ACCESS_KEY": "real-secret"}
    environ = connection.admin_environ(None, shell, tmp_path)
    assert (environ["AWS_ACCESS_KEY_ID"], environ["AWS_SECRET_ACCESS_KEY"]) == ("SRKEY", SECRET)


def test_a_planted_or_foreign_file_is_not_trusted(tmp_path: Path) -> None:
    """A connection.json committed to a repository (0644 after checkout) or naming files elsewhere is refused."""
    data = dev_dir(tmp_path)
    path = data / connection.FILE_NAME
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="not mode 0600"):
        connection.admin_environ(None, {}, tmp_path)
    path.chmod(0o600)
    document = json.loads(path.read_text())
    for planted in ({"env": {**document["env"], "STRONGROOM_KEYRING_FILE": "/etc/elsewhere/keyring.json"}},
                    {"s3_credentials_file": "/root/.aws/credentials.json"}):  # fmt: skip
        path.write_text(json.dumps({**document, **planted}))
        with pytest.raises(ConfigError, match="outside its folder"):
            connection.admin_environ(None, {}, tmp_path)
    path.write_text(json.dumps({**document, "env": {**document["env"], "STRONGROOM_GRANTS_FILE": "/x"}}))
    assert "STRONGROOM_GRANTS_FILE" not in connection.admin_environ(None, {}, tmp_path)  # only what dev writes
    for broken in ([1, 2], {"env": [1]}):
        path.write_text(json.dumps(broken))
        with pytest.raises(ConfigError, match="not a strongroom dev connection file"):
            connection.admin_environ(None, {}, tmp_path)


def test_a_stopped_dev_removes_its_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    published = connection.write(data, {"REDIS_URL": "redis://x"}, api_url="http://x", credentials_file=None)
    assert connection.load(data)["REDIS_URL"] == "redis://x"
    published.close()
    assert not (data / connection.FILE_NAME).exists()


def test_nothing_found_leaves_the_environment_alone(tmp_path: Path) -> None:
    assert connection.admin_environ(None, {"X": "1"}, tmp_path) == {"X": "1"}


def test_a_stopped_dev_is_named_not_mistaken_for_a_configuration_gap(tmp_path: Path) -> None:
    data = dev_dir(tmp_path, running=False)
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
    dev_dir(tmp_path, running=False)
    monkeypatch.chdir(tmp_path)
    assert main(["audit", "verify", "global"]) == 2
    err = capsys.readouterr().err
    assert "strongroom dev is not running" in err and "Traceback" not in err
    assert main(["audit", "verify", "global", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "no connection.json" in capsys.readouterr().err


def test_keyring_rotate_defaults_to_the_dev_keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in connection.CONNECTION_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    data = dev_dir(tmp_path, running=False)
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


def test_an_unreachable_redis_is_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.helpers.ports import free_port

    for name in connection.CONNECTION_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nobody listens there
    monkeypatch.setenv("STRONGROOM_ENV", "development")
    monkeypatch.setenv("STRONGROOM_KEYRING", Keyring.generate_json("k1"))
    monkeypatch.chdir(tmp_path)
    assert main(["audit", "verify", "global"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("strongroom audit: cannot reach Redis") and "Traceback" not in err


def test_a_keyring_that_cannot_be_written_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    keyring = tmp_path / "ro" / "keyring.json"
    keyring.parent.mkdir()
    keyring.write_text(Keyring.generate_json("k1"))
    monkeypatch.setattr(
        os, "replace", lambda *a: (_ for _ in ()).throw(OSError(30, "Read-only file system", str(keyring)))
    )
    assert main(["keyring", "rotate", str(keyring)]) == 1
    err = capsys.readouterr().err
    assert "Read-only file system" in err and "Traceback" not in err
