"""The recursion limit our processes run with, whatever a library sets when it is imported (py_ecc: 100000)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from shared.runtime_limits import RECURSION_LIMIT, pin_recursion_limit

pytestmark = pytest.mark.unit


def test_pin_restores_the_default_after_a_library_raised_it() -> None:
    sys.setrecursionlimit(100_000)  # what py_ecc does at import
    pin_recursion_limit()
    assert sys.getrecursionlimit() == RECURSION_LIMIT == 1000


def test_api_factory_and_worker_start_up_pin_it() -> None:
    from api_service.app import create_app
    from shared.settings import Settings
    from worker_service.celery_app import _pin_interpreter_limits

    sys.setrecursionlimit(100_000)
    create_app(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}))
    assert sys.getrecursionlimit() == RECURSION_LIMIT
    sys.setrecursionlimit(100_000)
    _pin_interpreter_limits()
    assert sys.getrecursionlimit() == RECURSION_LIMIT


def test_deep_json_in_an_api_process_is_a_recursion_error_not_a_crash() -> None:
    """Issue 10, item 1, second line of defence: in a fresh process where a library raised the recursion limit and
    that built the app, plain ``json.loads`` of 100000 nested arrays raises RecursionError instead of SIGSEGV."""
    code = textwrap.dedent(
        """
        import json, sys
        from api_service.app import create_app
        from shared.settings import Settings
        sys.setrecursionlimit(100000)  # what py_ecc does on import, if anything in the process loads it
        create_app(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}))
        try:
            json.loads("[" * 100000 + "]" * 100000)
        except RecursionError:
            print("recursion-error", sys.getrecursionlimit())
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert (done.returncode, done.stdout.strip().splitlines()[-1:]) == (0, ["recursion-error 1000"]), done.stderr[
        -2000:
    ]
