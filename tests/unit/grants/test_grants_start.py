"""Choosing the grant source at start: production has no default, `open` there is a warning, development is open.

Who may run the agents is a decision: a production API or worker without ``STRONGROOM_GRANTS_SOURCE`` refuses to
start with one line naming the variable and its choices; an explicit ``open`` starts and says in its log that
anyone with a key can run every agent; ``strongroom dev`` and the test stack need no setting.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared import grants
from shared.errors import ConfigError
from shared.grants import OPEN_IN_PRODUCTION, OpenGrants, StaticGrants, grant_source_at_start
from shared.settings import Settings
from strongroom.dev.stack import DevStack, _prepare_env

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
BASE = {"REDIS_URL": "redis://127.0.0.1:1/0", "STRONGROOM_PUBLIC_AUTHORITIES": "api.example:443"}
PRODUCTION = {**BASE, "STRONGROOM_ENV": "production"}


class Recorder:
    """Stands in for the module's logger: what was logged, at which level (independent of structlog's set-up)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(grants, "log", recorder)
    return recorder


def _refusal(action: object) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        action()  # type: ignore[operator]
    return caught.value


def test_production_without_a_grant_source_is_a_configuration_error_naming_the_choices() -> None:
    settings = Settings.from_env(PRODUCTION)  # loading alone is fine: tools that never look at grants still work
    error = _refusal(lambda: grant_source_at_start(settings, process="api"))
    assert error.variable == "STRONGROOM_GRANTS_SOURCE"
    assert "STRONGROOM_ENV=production" in error.detail
    assert "`static`" in error.detail and "`open`" in error.detail


def test_admin_tools_that_authorise_nothing_run_in_production_without_a_grant_source() -> None:
    """`strongroom audit verify` and `keys` build the worker's services but never decide who may do what."""
    from shared.crypto.keyring import Keyring
    from worker_service.services import Services

    settings = Settings.from_env({**PRODUCTION, "STRONGROOM_KEYRING": Keyring.generate_json()})
    assert settings.resolved_grants_source == "open"
    services = Services.from_settings(settings)  # built without refusing: it connects to nothing yet
    assert isinstance(services.grants, OpenGrants)


def test_explicit_open_in_production_starts_with_a_warning(logged: Recorder) -> None:
    settings = Settings.from_env({**PRODUCTION, "STRONGROOM_GRANTS_SOURCE": "open"})
    settings.validate_api()
    assert isinstance(grant_source_at_start(settings, process="worker"), OpenGrants)
    assert logged.lines == [("warning", OPEN_IN_PRODUCTION, {"process": "worker"})]
    assert "anyone with a key can run every agent" in OPEN_IN_PRODUCTION


def test_static_in_production_starts_quietly(tmp_path: Path, logged: Recorder) -> None:
    path = tmp_path / "grants.yaml"
    path.write_text("grants:\n  - {address: '*', agents: [privacy-audit]}\n")
    settings = Settings.from_env(
        {**PRODUCTION, "STRONGROOM_GRANTS_SOURCE": "static", "STRONGROOM_GRANTS_FILE": str(path)}
    )
    settings.validate_api()
    assert isinstance(grant_source_at_start(settings, process="api"), StaticGrants)
    assert [line for line in logged.lines if line[0] == "warning"] == []


def test_development_and_strongroom_dev_default_to_open_without_a_warning(tmp_path: Path, logged: Recorder) -> None:
    env = _prepare_env(argparse.Namespace(host="127.0.0.1", port=8123), tmp_path, {})
    assert "STRONGROOM_GRANTS_SOURCE" not in env
    for settings in (
        DevStack(argparse.Namespace(host="127.0.0.1", port=8123), tmp_path).check_settings(),
        Settings.from_env({**env, **BASE}),
        Settings.from_env({**BASE, "STRONGROOM_ENV": "development"}),
    ):
        settings.validate_api()
        assert settings.resolved_grants_source == "open"
        assert isinstance(grant_source_at_start(settings, process="api"), OpenGrants)
    assert logged.lines == []


@pytest.fixture
def parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A process environment with a static grants file (and a keyring); every parse of a grants file, listed."""
    from shared.crypto.keyring import Keyring

    path = tmp_path / "grants.yaml"
    path.write_text("grants:\n  - {address: '*', agents: [privacy-audit]}\n")
    env = {**BASE, "STRONGROOM_GRANTS_SOURCE": "static", "STRONGROOM_GRANTS_FILE": str(path)}
    for name, value in {**env, "STRONGROOM_KEYRING": Keyring.generate_json()}.items():
        monkeypatch.setenv(name, value)
    texts: list[str] = []
    parse = grants.parse_grants
    monkeypatch.setattr(grants, "parse_grants", lambda text, **kw: texts.append(text) or parse(text, **kw))
    return texts


def test_strongroom_api_loads_a_static_grants_file_once_and_serves_with_it(
    parsed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start-up check and the app's grant source are one load (they were two reads of the file, and two
    parses, that could disagree if the file changed in between)."""
    from strongroom.cli import server

    served: list[object] = []

    def serve(app: Any, settings: Settings) -> None:
        async def start_and_stop() -> None:
            async with app.router.lifespan_context(app):
                served.append(app.state.services.grants)

        asyncio.run(start_and_stop())

    monkeypatch.setattr("api_service.serve.serve", serve)
    assert server.run_api(argparse.Namespace(command="api", host=None, port=None)) == 0
    assert len(parsed) == 1
    assert len(served) == 1 and isinstance(served[0], StaticGrants)


def test_the_worker_runs_with_the_grants_file_it_checked_at_start(
    parsed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """worker_init's check loads the file; the tasks' services use that source (a pool process inherits it)."""
    from worker_service import celery_app

    fresh = celery_app.WorkerProcess()
    monkeypatch.setattr(celery_app, "process", fresh)
    celery_app._check_grant_source()
    source = fresh.services().grants
    assert isinstance(source, StaticGrants) and source is fresh.grants
    assert len(parsed) == 1


def _run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [sys.executable, "-m", "strongroom", *command.split()],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("command", ["api", "worker --pool solo"])
def test_strongroom_api_and_worker_refuse_a_production_start_without_one(command: str) -> None:
    """The real entry points, before anything binds or connects: one line naming the variable, exit 2."""
    result = _run(command, PRODUCTION)
    assert result.returncode == 2, result.stderr[-2000:]
    name = command.split()[0]
    assert f"strongroom {name}: configuration error: STRONGROOM_GRANTS_SOURCE is required" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["api", "worker --pool solo"])
def test_strongroom_api_and_worker_refuse_to_start_with_a_bad_grants_file(command: str, tmp_path: Path) -> None:
    """A static file that does not load stops the process at start with one line (the API used to fail in its
    lifespan instead: a traceback and exit 3)."""
    bad = tmp_path / "grants.yaml"
    bad.write_text("grants:\n  - {address: '0x12', agents: ['*']}\n")
    env = {**BASE, "STRONGROOM_ENV": "development", "STRONGROOM_GRANTS_SOURCE": "static"}
    for path, reason in ((tmp_path / "missing.yaml", "cannot be read"), (bad, "grants.yaml: grants.0.address")):
        result = _run(command, {**env, "STRONGROOM_GRANTS_FILE": str(path)})
        assert result.returncode == 2, result.stderr[-2000:]
        name = command.split()[0]
        assert f"strongroom {name}: configuration error: STRONGROOM_GRANTS_FILE {reason}" in result.stderr
        assert "Traceback" not in result.stderr


def test_compose_sets_the_grant_source_for_every_strongroom_process() -> None:
    """Each production process of compose.yaml names its grant source; a static file is mounted and loads."""
    deploy = ROOT / "deploy"
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    for name in ("api", "worker", "beat", "init"):
        service = compose["services"][name]
        env = {k: str(v) for k, v in service["environment"].items()}
        assert env["STRONGROOM_ENV"] == "production"
        assert env["STRONGROOM_GRANTS_SOURCE"] in ("open", "static"), name
        if env["STRONGROOM_GRANTS_SOURCE"] == "static":
            inside = env["STRONGROOM_GRANTS_FILE"]
            mounts = [str(v).split(":") for v in service.get("volumes", [])]
            (host,) = [
                deploy / src / inside[len(dst) :].lstrip("/") for src, dst, *_ in mounts if inside.startswith(dst)
            ]
            env["STRONGROOM_GRANTS_FILE"] = str(host)
        grant_source_at_start(Settings.from_env({**env, **BASE}), process=name)
