"""The page's JavaScript unit tests (tests/js/*.test.mjs) under ``node --test``, as part of the pytest run.

They cover the pure modules (incremental SHA-256 against NIST vectors, words and times, deep links, preview
types); tests/browser/test_js_modules.py checks the crypto modules against the Python implementation.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.node import requires_node

pytestmark = [pytest.mark.unit, requires_node]

ROOT = Path(__file__).resolve().parents[2]


def test_node_unit_tests_pass() -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is required (apt-get install -y nodejs npm)"
    tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "js").glob("*.test.mjs"))
    assert tests, "tests/js has no *.test.mjs files"
    done = subprocess.run([node, "--test", *tests], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout
