"""One place for each decision (issue 16), kept: each of these was once written in several places.

* every ``/api/v1`` endpoint (but the OpenAPI document) is declared ``@signed`` (``api_service.access``); no
  endpoint verifies a signature, loads an operation or writes an audit event by hand;
* cancelling has one implementation (``shared.cancel``): only it raises the Redis cancel flag;
* every strongroom task derives from ``StrongroomTask``; periodic jobs are registered by function, not by name;
* each OS helper exists once (``prctl``);
* production commands do not load the dev stack (``strongroom.dev`` says it is never used in production).

The audit trail itself is pinned by ``tests/integration/test_audit_equivalence.py``; ``global`` statements by
``test_no_global_state.py``.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.routing import Route

from api_service import access
from api_service.openapi import OPENAPI_PATH
from api_service.routes import routes
from shared.settings import Settings
from worker_service.celery_app import app
from worker_service.schedule import beat_schedule
from worker_service.tasks import PeriodicJob, StrongroomTask

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api_service", "worker_service", "shared", "strongroom")


def sources(*packages: str) -> Iterator[tuple[str, ast.Module]]:
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield str(path.relative_to(ROOT)), ast.parse(path.read_text(encoding="utf-8"), str(path))


def called(tree: ast.AST) -> Iterator[tuple[str, ast.Call]]:
    """Every call with the name it calls (``f(...)`` and ``x.f(...)`` both as ``f``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name:
                yield name, node


def test_every_api_endpoint_is_declared_signed() -> None:
    wrapper = inspect.getsourcefile(access)
    public = {OPENAPI_PATH}  # the API's description: nobody's data, no signature
    api = [r for r in routes() if isinstance(r, Route) and r.path.startswith("/api/v1/") and r.path not in public]
    assert len(api) >= 10
    for route in api:
        assert route.endpoint.__code__.co_filename == wrapper, f"{route.path} is not @signed"


def test_no_endpoint_authenticates_or_audits_by_hand() -> None:
    by_hand = {"authenticate", "audit", "load_operation", "apublish", "publish", "new_event"}
    found = [
        f"{where}:{node.lineno} {name}"
        for where, tree in sources("api_service/endpoints")
        for name, node in called(tree)
        if name in by_hand
    ]
    assert found == []


def test_only_shared_cancel_raises_the_cancel_flag() -> None:
    """The flag is read (the run's watchdog) and cleared (the run's end) elsewhere, but set in one place."""
    setters = [
        where
        for where, tree in sources(*PACKAGES)
        for name, node in called(tree)
        if name == "set" and node.args and any(n == "redis_cancel_key" for n, _ in called(node.args[0]))
    ]
    assert setters == ["shared/cancel.py"]


def test_every_task_has_the_one_base_and_periodic_jobs_are_functions() -> None:
    ours = {name: task for name, task in app.tasks.items() if name.startswith("strongroom.")}
    assert ours and all(isinstance(task, StrongroomTask) for task in ours.values())
    schedule = beat_schedule(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}))
    for entry in schedule.values():
        task = app.tasks[entry["task"]]
        assert isinstance(task, PeriodicJob) and inspect.isfunction(task.job), entry["task"]
    strings = [
        f"{where}:{node.lineno}"
        for where, tree in sources("worker_service")
        for name, node in called(tree)
        if name in {"import_module", "__import__", "symbol_by_name"}
    ]
    assert strings == []


def test_each_os_helper_exists_once() -> None:
    prctl = [f"{where}:{node.lineno}" for where, tree in sources(*PACKAGES) for n, node in called(tree) if n == "prctl"]
    assert len(prctl) == 1, prctl


def test_production_commands_do_not_load_the_dev_stack() -> None:
    """Only ``strongroom dev`` itself imports ``strongroom.dev``: what the keyring and admin commands share with the
    dev stack (``write_private``, the dev connection file) lives outside it."""
    loads = set()
    for where, tree in sources(*PACKAGES):
        if where.startswith("strongroom/dev/"):
            continue
        for top in tree.body:
            owner = top.name if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) else "<module>"
            for node in ast.walk(top):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if any(name == "strongroom.dev" or name.startswith("strongroom.dev.") for name in names):
                    loads.add(f"{where} {owner}")
    assert sorted(loads) == ["strongroom/cli/server.py run_dev"]
