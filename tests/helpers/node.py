"""Running the JavaScript reference libraries (tests/interop/js, installed by `npm ci`) from Python tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

JS = Path(__file__).resolve().parents[1] / "interop" / "js"

# Skipped only on a developer machine without Node.js; in CI (which installs it) a missing node must fail loudly.
requires_node = pytest.mark.skipif(
    shutil.which("node") is None and not os.environ.get("CI"), reason="Node.js is not installed"
)


def run_node(script: str, request: dict[str, Any]) -> dict[str, Any]:
    """Feed ``request`` as JSON to ``node <script>`` and return the JSON it prints."""
    node = shutil.which("node")
    assert node is not None, "Node.js is required (apt-get install -y nodejs npm)"
    done = subprocess.run(
        [node, str(JS / script)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=JS,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer
