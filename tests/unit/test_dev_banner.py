"""The commands `strongroom dev` prints when ready are typed as they must be to work (strongroom.dev.stack).

Run for real against a dev stack: tests/e2e/test_dev_admin.py::test_the_banner_commands_work_as_printed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from strongroom.dev.stack import command_path, dev_authorities, local_url, next_steps

pytestmark = pytest.mark.unit


def venv(root: Path) -> Path:
    """A fake venv's python, next to a `strongroom` script."""
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").touch()
    script = bin_dir / "strongroom"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    return bin_dir / "python"


def test_not_on_path_the_venv_script_is_printed_relative_to_the_project(tmp_path: Path) -> None:
    python = venv(tmp_path)
    assert command_path(tmp_path, str(python), "/usr/bin") == (".venv/bin/strongroom", False)
    lines = next_steps("http://127.0.0.1:8080", tmp_path / ".strongroom", tmp_path, executable=str(python), path_env="")
    assert "    .venv/bin/strongroom client keygen" in lines
    assert "    .venv/bin/strongroom audit verify <operation-id>" in lines
    assert any("`. .venv/bin/activate`" in line for line in lines)


def test_an_activated_venv_gets_the_bare_name_and_no_hint(tmp_path: Path) -> None:
    python = venv(tmp_path)
    program, on_path = command_path(tmp_path, str(python), str(python.parent))
    assert (program, on_path) == ("strongroom", True)
    lines = next_steps(
        "http://127.0.0.1:8080", tmp_path / ".strongroom", tmp_path, executable=str(python), path_env=str(python.parent)
    )
    assert "    strongroom client keygen" in lines and not any("activate" in line for line in lines)


def test_elsewhere_the_path_is_absolute_and_quoted_and_the_port_and_data_dir_are_given(tmp_path: Path) -> None:
    python = venv(tmp_path / "my project")
    elsewhere = tmp_path / "work"
    lines = next_steps("http://127.0.0.1:18080", tmp_path / "d", elsewhere, executable=str(python), path_env="")
    script = f"'{tmp_path}/my project/.venv/bin/strongroom'"
    assert f"    STRONGROOM_API_URL=http://127.0.0.1:18080 {script} client keygen" in lines
    assert f"    {script} audit verify <operation-id> --data-dir {tmp_path}/d" in lines


def test_without_a_script_python_dash_m_is_printed(tmp_path: Path) -> None:
    assert command_path(tmp_path, str(tmp_path / "python3"), "") == (f"{tmp_path}/python3 -m strongroom", False)


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8080"),
        ("0.0.0.0", "http://127.0.0.1:8080"),  # a wildcard bind is reached, and signed for, by a loopback name
        ("::", "http://127.0.0.1:8080"),
        ("::1", "http://[::1]:8080"),
        ("localhost", "http://localhost:8080"),
    ],
)
def test_the_printed_url_is_one_a_client_can_sign_for(host: str, url: str) -> None:
    assert local_url(host, 8080) == url
    authority = url.removeprefix("http://")
    assert authority in dev_authorities(host, 8080)
