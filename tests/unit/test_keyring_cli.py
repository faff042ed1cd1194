"""`strongroom keyring`: a live keyring is never replaced by accident, and never left half-written."""

import json
import os
import stat
from pathlib import Path

import pytest

from shared.crypto.keyring import Keyring
from strongroom.cli import main
from strongroom.files import write_private

pytestmark = pytest.mark.unit


def test_generate_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "keyring.json"
    assert main(["keyring", "generate", "--output", str(target)]) == 0
    first = target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert main(["keyring", "generate", "--output", str(target)]) == 2
    assert "--force" in capsys.readouterr().err
    assert target.read_text() == first
    assert main(["keyring", "generate", "--output", str(target), "--force"]) == 0
    assert target.read_text() != first


def test_rotate_adds_a_primary_and_keeps_a_backup(tmp_path: Path) -> None:
    target = tmp_path / "keyring.json"
    target.write_text(Keyring.generate_json("k1"))
    before = target.read_text()
    assert main(["keyring", "rotate", str(target)]) == 0
    rotated = Keyring.from_json(target.read_text())
    assert rotated.primary_id != "k1" and "k1" in rotated.key_ids
    backup = tmp_path / "keyring.json.bak"
    assert backup.read_text() == before
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600


def test_a_failed_write_leaves_the_old_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "keyring.json"
    write_private(target, json.dumps({"old": True}))

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        write_private(target, json.dumps({"new": True}))
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["keyring.json"]  # no temporary file left behind
