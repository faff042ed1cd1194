"""The floors of the tree, by import: who may use whom.

``shared`` holds the contracts both services use and imports neither service nor ``strongroom``, not even lazily
inside a function. ``api_service`` and ``worker_service`` speak only through ``shared``, Redis and S3: neither
imports the other, nor the public ``strongroom`` package. ``strongroom`` (SDK, command, dev stack) sits on top and
may use all three.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FLOORS = {
    "shared": {"api_service", "worker_service", "strongroom"},
    "api_service": {"worker_service", "strongroom"},
    "worker_service": {"api_service", "strongroom"},
    "strongroom": set(),
}


def imported_modules(source: str, filename: str) -> set[str]:
    """Every absolute module an AST imports, including ``importlib.import_module("...")`` string literals."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def violations(package: str) -> list[str]:
    forbidden = FLOORS[package]
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in imported_modules(path.read_text(), str(path)):
            if module.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(ROOT)} imports {module}")
    return bad


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_each_floor_imports_only_what_lies_below(package: str) -> None:
    assert (ROOT / package / "__init__.py").exists()
    assert violations(package) == []


def test_every_top_level_package_has_a_floor() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == set(FLOORS)


def test_shared_keeps_only_contracts() -> None:
    """The SDK, the command and the dev stack are the public package's, not the contracts'."""
    assert not (ROOT / "shared" / "client").exists()
    assert not (ROOT / "shared" / "cli").exists()
    assert not (ROOT / "shared" / "devstack.py").exists()
    assert (ROOT / "strongroom" / "client" / "__init__.py").exists()
    assert (ROOT / "strongroom" / "cli" / "__init__.py").exists()
    assert (ROOT / "strongroom" / "dev" / "__init__.py").exists()


def test_detector_catches_every_import_form() -> None:
    source = (
        "import worker_service.tasks\n"
        "from worker_service import celery_app\n"
        "import importlib\nimportlib.import_module('worker_service.x')\n"
        "def f():\n    from worker_service.pipeline import store\n"
    )
    assert imported_modules(source, "x.py") >= {
        "worker_service.tasks",
        "worker_service",
        "worker_service.x",
        "worker_service.pipeline",
    }
