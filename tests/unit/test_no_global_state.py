"""No module-level state changed through ``global``: state lives on objects (issue 16).

A process's clients and threads are attributes of an object (e.g. ``worker_service.celery_app.process``), so
what a function changes is visible in its arguments or its object, and a test can hand in its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api_service", "worker_service", "shared", "strongroom")


def global_statements(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(tree) if isinstance(node, ast.Global)]


def test_no_global_statements() -> None:
    found = [
        where
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for where in global_statements(path)
    ]
    assert found == []
