"""Materialise an operation's input in the agent's working directory.

``{"files": {"<name>": "<base64>"}}`` become files in ``in/`` (names checked like artifact names, so nothing
escapes the directory); ``input.json`` keeps every other field and lists the file names instead of their bytes.
The input is bounded by the API (``STRONGROOM_MAX_INPUT_BYTES``), so decoding it whole is fine.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from shared import layout
from shared.errors import ValidationFailed
from worker_service.agents.workdir import Workdir


def write_input(workdir: Workdir, agent_input: dict[str, Any]) -> None:
    """Write ``input.json`` and ``in/*``; ``ValidationFailed`` for a bad file name or bad base64."""
    files = agent_input.get("files") or {}
    if not isinstance(files, dict):
        raise ValidationFailed("input.files must map names to base64 contents", code="input_invalid")
    for name, encoded in files.items():
        layout.validate_artifact_name(name)
        if not isinstance(encoded, str):
            raise ValidationFailed(f"input file {name!r} is not a base64 string", code="input_invalid")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationFailed(f"input file {name!r} is not valid base64", code="input_invalid") from None
        (workdir.in_dir / name).write_bytes(data)
    described = {**agent_input, "files": sorted(files)}
    workdir.input_file.write_text(json.dumps(described, ensure_ascii=False))
