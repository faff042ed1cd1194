"""Identity files: 0600, never overwritten by accident, refused when too open or inconsistent."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from shared.crypto import keywrap
from strongroom.client.errors import IdentityError
from strongroom.client.identity import create_identity, default_identity_path, load_identity

pytestmark = pytest.mark.unit


def test_create_then_load_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "identity.json"
    created = create_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_identity(path)
    assert loaded.address == created.address
    assert loaded.address.startswith("0x") and loaded.address == loaded.address.lower()
    assert loaded.encryption_public_key == keywrap.public_key_from_secret(loaded.encryption_secret_key)
    wrap = keywrap.wrap_data_key(loaded.encryption_public_key, "op", "n", b"k" * 32, "0" * 64)
    assert keywrap.unwrap_data_key(loaded.encryption_secret_key, wrap, "op", "n").data_key == b"k" * 32


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    first = create_identity(path)
    with pytest.raises(IdentityError) as info:
        create_identity(path)
    assert info.value.code == "identity_exists"
    assert load_identity(path).address == first.address
    second = create_identity(path, force=True)
    assert second.address != first.address
    assert load_identity(path).address == second.address
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["identity.json"]


def test_refuses_a_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    create_identity(path)
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_identity(path)


def test_missing_and_corrupt_files_name_the_problem_not_the_secret(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="keygen"):
        load_identity(tmp_path / "nope.json")
    path = tmp_path / "identity.json"
    identity = create_identity(path)
    data = json.loads(path.read_text())
    data["encryption_public_key"] = keywrap.generate_encryption_keypair()[1]
    path.write_text(json.dumps(data))
    with pytest.raises(IdentityError, match="does not match") as info:
        load_identity(path)
    assert data["signing_key"] not in str(info.value)
    path.write_text("{not json")
    with pytest.raises(IdentityError, match="not a valid"):
        load_identity(path)
    assert "signing_key" not in repr(identity) and "secret" not in repr(identity)


def test_default_path_honours_the_environment(tmp_path: Path) -> None:
    assert default_identity_path({"STRONGROOM_IDENTITY": str(tmp_path / "x.json")}) == tmp_path / "x.json"
    assert default_identity_path({}).name == "identity.json"
    assert default_identity_path({}).parent.name == "strongroom"
