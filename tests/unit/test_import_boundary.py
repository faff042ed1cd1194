"""api_service and worker_service speak only through shared, Redis and S3: neither imports the other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"api_service": "worker_service", "worker_service": "api_service"}


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
    other = FORBIDDEN[package]
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in imported_modules(path.read_text(), str(path)):
            if module == other or module.startswith(other + "."):
                bad.append(f"{path.relative_to(ROOT)} imports {module}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_cross_imports(package: str) -> None:
    assert (ROOT / package / "__init__.py").exists()
    assert violations(package) == []


def test_shared_never_imports_a_service_at_module_level() -> None:
    """shared/ is the contract layer; only the CLI may load a service, and only inside a function."""
    bad = []
    for path in sorted((ROOT / "shared").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            bad += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert bad == []


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
