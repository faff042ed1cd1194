"""`pip install strongroom` is the client alone, and it works: keygen and a signed request against a real API.

The package is installed for real (a wheel built from a copy of the sources, dependencies resolved by pip from its
usual index and cache) into a fresh virtual environment that has none of the servers' dependencies, then driven
from outside the checkout so nothing can be imported from the repository by accident.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "shared", "strongroom", "api_service", "worker_service")
SERVER_MODULES = ("starlette", "uvicorn", "celery", "redis", "boto3", "structlog", "eth_account", "web3")


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("client-install")
    source = work / "src"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        cwd=work,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


def run(venv: Path, *argv: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "strongroom"), *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def test_the_base_install_holds_no_server_dependency(client_venv: Path) -> None:
    code = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    out = subprocess.run(
        [str(client_venv / "bin" / "python"), "-c", code, *SERVER_MODULES], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_keygen_and_a_signed_request_from_the_client_alone(client_venv: Path, api_url: str, tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "STRONGROOM_IDENTITY": str(tmp_path / "id.json")}
    keygen = run(client_venv, "client", "keygen", "--json", env=env, cwd=tmp_path)
    assert keygen.returncode == 0, keygen.stderr
    assert json.loads(keygen.stdout)["address"].startswith("0x")

    listed = run(client_venv, "client", "--api", api_url, "ls", "--json", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr  # the API verified our signature
    assert json.loads(listed.stdout) == {"operations": []}

    created = run(
        client_venv, "client", "--api", api_url, "create", "--agent", "privacy-audit", "--text", "hi", "--json",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["status"] == "pending"


def test_a_server_command_names_the_extra_to_install(client_venv: Path, tmp_path: Path) -> None:
    result = run(client_venv, "api", env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)}, cwd=tmp_path)
    assert result.returncode == 2
    assert "pip install 'strongroom[server]'" in result.stderr
    assert "Traceback" not in result.stderr
