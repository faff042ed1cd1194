"""`strongroom dev` silences Celery's superuser warning for its own worker only, and only as root."""

from __future__ import annotations

import pytest

from strongroom.dev.stack import ROOT_WARNING, worker_env

pytestmark = pytest.mark.unit


def test_as_root_exactly_that_warning_is_filtered() -> None:
    env = worker_env({"PATH": "/usr/bin"}, euid=0)
    assert env["PYTHONWARNINGS"] == f"ignore:{ROOT_WARNING}"
    kept = worker_env({"PYTHONWARNINGS": "error::DeprecationWarning"}, euid=0)
    assert kept["PYTHONWARNINGS"] == f"error::DeprecationWarning,ignore:{ROOT_WARNING}"


def test_as_another_user_nothing_changes() -> None:
    assert worker_env({"PATH": "/usr/bin"}, euid=1000) == {"PATH": "/usr/bin"}
