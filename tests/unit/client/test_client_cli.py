"""`strongroom client ...` in process, against the in-memory API: output, --json, exit codes, no tracebacks."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import stat
from pathlib import Path

import pytest
from client_fake_api import API, FakeApi, problem

from strongroom.cli import client as cli
from strongroom.cli import main
from strongroom.client.identity import load_identity
from strongroom.client.sdk import StrongroomClient

pytestmark = pytest.mark.unit


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()

    def client(args: argparse.Namespace) -> StrongroomClient:
        return StrongroomClient(
            API, load_identity(cli._identity_path(args)), transport=fake.transport, sleep=lambda _: None
        )

    monkeypatch.setattr(cli, "_client", client)
    return fake


@pytest.fixture
def ident(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "id.json"
    monkeypatch.setenv("STRONGROOM_IDENTITY", str(path))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["client", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_keygen_prints_public_parts_only(capsys: pytest.CaptureFixture[str], ident: Path) -> None:
    code, out, _ = run(capsys, "--json", "keygen")
    assert code == 0
    shown = json.loads(out)
    stored = json.loads(ident.read_text())
    assert shown["address"] == stored["address"]
    assert shown["encryption_public_key"] == stored["encryption_public_key"]
    assert stored["signing_key"].removeprefix("0x") not in out
    assert stored["encryption_secret_key"] not in out
    assert stat.S_IMODE(ident.stat().st_mode) == 0o600
    code, _, err = run(capsys, "keygen")
    assert code == 10 and err.startswith("error: ") and "--force" in err
    assert "Traceback" not in err


def test_session(capsys: pytest.CaptureFixture[str], api: FakeApi, ident: Path, tmp_path: Path) -> None:
    run(capsys, "keygen")
    doc = tmp_path / "notes.txt"
    doc.write_text("call me at +1 555 0100")
    code, out, _ = run(capsys, "create", "--text", "hello", "--file", str(doc), "--json")
    assert code == 0
    op_id = json.loads(out)["id"]
    assert api.last_input == {"text": "hello", "files": {"notes.txt": base64.b64encode(doc.read_bytes()).decode()}}

    op = api.operations[op_id]
    op.status = "succeeded"
    api.add_artifact(op, "privacy_audit.md", b"# findings\n")
    api.add_artifact(op, "data.bin", bytes(range(256)) * 300)

    code, out, _ = run(capsys, "wait", op_id)
    assert code == 0 and "succeeded" in out and "privacy_audit.md" in out
    code, out, _ = run(capsys, "ls", "--api", "http://ignored.example")  # global option after the command
    assert code == 0 and op_id in out

    out_dir = tmp_path / "out"
    code, out, _ = run(capsys, "get", op_id, "-o", str(out_dir), "--json")
    assert code == 0
    written = {w["name"]: w for w in json.loads(out)["artifacts"]}
    for name, artifact in op.artifacts.items():
        data = (out_dir / name).read_bytes()
        assert data == artifact.plaintext
        assert written[name]["checksum"] == "sha256:" + hashlib.sha256(data).hexdigest()
    code, _, err = run(capsys, "get", op_id, "data.bin", "-o", str(out_dir))
    assert code == 1 and "--force" in err
    code, _, _ = run(capsys, "get", op_id, "data.bin", "-o", str(out_dir), "--force")
    assert code == 0

    code, out, _ = run(capsys, "rm", op_id, "data.bin")
    assert code == 0 and "deleted data.bin" in out
    code, _, err = run(capsys, "get", op_id, "data.bin", "-o", str(out_dir), "--force")
    assert code == 5 and "data.bin" in err

    api.events = [
        {"time": "t", "action": "artifact.delete", "result": "ok", "actor": "0xabc", "artifact": "data.bin"},
        {"time": "t", "action": "artifact.delete", "result": "denied", "actor": "0xabc", "artifact": "data.bin",
         "reason": "artifact_not_found"},
    ]  # fmt: skip
    code, out, _ = run(capsys, "log", op_id)
    assert code == 0 and "verified" in out
    ok, refused = out.splitlines()[:2]
    assert ok.split() == ["t", "artifact.delete", "ok", "0xabc", "data.bin"]
    assert refused.split() == ["t", "artifact.delete", "denied", "0xabc", "data.bin", "(artifact_not_found)"]


@pytest.mark.parametrize(
    ("status", "code_name", "exit_code", "hint"),
    [
        (401, "signature_expired", 3, "check your clock"),
        (403, "not_grantee", 4, "not the grantee"),
        (404, "expired", 5, "retention"),
        (409, "operation_finished", 6, "already finished"),
        (422, "input_invalid", 7, "input was refused"),
        (503, "unavailable", 8, "retry later"),
    ],
)
def test_error_codes_become_one_line_and_an_exit_code(
    capsys: pytest.CaptureFixture[str],
    api: FakeApi,
    ident: Path,
    status: int,
    code_name: str,
    exit_code: int,
    hint: str,
) -> None:
    run(capsys, "keygen")
    api.fail_next += [problem(status, code_name, "server says so")] * 5
    code, out, err = run(capsys, "status", "privacy-audit_" + "a" * 26)
    assert code == exit_code
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and hint in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("code_name", "detail"),
    [
        ("agent_unknown", "no agent named 'nope' on this server; available: privacy-audit"),
        ("retention_days_invalid", "retention_days must be between 1 and 7"),
    ],
)
def test_a_server_detail_that_says_it_all_is_the_whole_message(
    capsys: pytest.CaptureFixture[str], api: FakeApi, ident: Path, code_name: str, detail: str
) -> None:
    run(capsys, "keygen")
    api.fail_next.append(problem(422, code_name, detail))
    code, _, err = run(capsys, "create", "--agent", "nope", "--text", "x")
    assert code == 7 and err == f"error: {detail}\n"


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", " lead"])
def test_unsafe_names_on_the_command_line_are_refused_before_any_request(
    capsys: pytest.CaptureFixture[str], api: FakeApi, ident: Path, tmp_path: Path, name: str
) -> None:
    run(capsys, "keygen")
    sent = len(api.requests)
    for command in (
        ["get", "privacy-audit_" + "a" * 26, name, "-o", str(tmp_path)],
        ["rm", "privacy-audit_" + "a" * 26, name],
    ):
        code, _, err = run(capsys, *command)
        assert code == 7 and err.startswith("error: artifact name "), err
    assert len(api.requests) == sent


def test_wait_exit_code_for_failed_operation(capsys: pytest.CaptureFixture[str], api: FakeApi, ident: Path) -> None:
    run(capsys, "keygen")
    identity = load_identity(ident)
    op = api.add_operation("privacy-audit_" + "q" * 26, identity.address, identity.encryption_public_key)
    op.status = "failed"
    code, _, _ = run(capsys, "wait", op.id)
    assert code == cli.EXIT_NOT_SUCCEEDED


def test_agent_written_text_cannot_drive_the_terminal(
    capsys: pytest.CaptureFixture[str], api: FakeApi, ident: Path
) -> None:
    run(capsys, "keygen")
    identity = load_identity(ident)
    op = api.add_operation("privacy-audit_" + "t" * 26, identity.address, identity.encryption_public_key)
    op.status = "succeeded"
    op.summary = "all good\x1b]0;pwned\x07\x1b[2J"
    code, out, _ = run(capsys, "status", op.id)
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out
    assert "all good\ufffd]0;pwned" in out


def test_missing_identity_is_a_clear_error(capsys: pytest.CaptureFixture[str], api: FakeApi, ident: Path) -> None:
    code, _, err = run(capsys, "ls")
    assert code == 10 and "keygen" in err


def test_create_needs_input(capsys: pytest.CaptureFixture[str], api: FakeApi, ident: Path) -> None:
    run(capsys, "keygen")
    code, _, err = run(capsys, "create")
    assert code == 1 and "--text" in err


def test_unreachable_api(capsys: pytest.CaptureFixture[str], ident: Path) -> None:
    run(capsys, "keygen")
    code, _, err = run(capsys, "--api", "http://127.0.0.1:9", "status", "x")
    assert code == 8 and "is it running" in err


def test_server_chosen_names_cannot_escape_the_output_dir(
    capsys: pytest.CaptureFixture[str], api: FakeApi, ident: Path, tmp_path: Path
) -> None:
    run(capsys, "keygen")
    identity = load_identity(ident)
    op = api.add_operation("privacy-audit_" + "r" * 26, identity.address, identity.encryption_public_key)
    api.add_artifact(op, "../escape.txt", b"x")
    api.add_artifact(op, "+fine.txt", b"y")  # sorts before the bad name: written first if names were checked late
    code, _, err = run(capsys, "get", op.id, "-o", str(tmp_path / "out"))
    assert code == 7 and "artifact name" in err
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []  # nothing written
