"""`strongroom worker --quiet` / `strongroom beat --quiet` pass Celery's global ``--quiet`` (no start-up banner),
ahead of the sub-command where Celery reads it; without the flag nothing changes."""

from __future__ import annotations

from typing import Any

import pytest

from strongroom.cli import build_parser, server

pytestmark = pytest.mark.unit


class _App:
    def __init__(self) -> None:
        self.argv: list[str] = []

    def worker_main(self, argv: list[str]) -> None:
        self.argv = argv

    def start(self, argv: list[str]) -> None:
        self.argv = argv


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> _App:
    fake = _App()
    monkeypatch.setattr(server, "_celery_app", lambda: fake)
    monkeypatch.setattr(server, "load_settings", lambda process, **_: _Settings())
    return fake


class _Settings:
    log_level = "INFO"


def _run(*argv: str) -> Any:
    args = build_parser().parse_args(list(argv))
    return args.handler(args)


@pytest.mark.parametrize("command", [["worker"], ["beat", "--schedule", "/nonexistent/schedule"]])
def test_quiet_goes_before_the_celery_subcommand(app: _App, command: list[str]) -> None:
    assert _run(*command, "--quiet") == 0
    assert app.argv[:2] == ["--quiet", command[0]]


@pytest.mark.parametrize("command", [["worker"], ["beat", "--schedule", "/nonexistent/schedule"]])
def test_without_it_celery_prints_its_banner_as_before(app: _App, command: list[str]) -> None:
    assert _run(*command) == 0
    assert app.argv[0] == command[0] and "--quiet" not in app.argv
