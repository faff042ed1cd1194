"""Checks on what an agent left in ``out/`` before anything is published.

All-or-nothing: one violation fails the operation with a summary naming the limit, and nothing is stored. Only
regular files directly in ``out/`` count; a directory or a symlink is refused rather than skipped, so an agent
never "succeeds" with a silently shorter result than it meant to produce.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from shared import layout
from shared.errors import StrongroomError, ValidationFailed
from worker_service.agents.runner import Limits


class LimitExceeded(StrongroomError):
    """An agent broke a resource limit or the output protocol; ``detail`` is the operation's result.summary."""

    status = 422
    code = "limit_exceeded"
    title = "Agent limit exceeded"


@dataclass(frozen=True)
class OutputFile:
    name: str
    path: Path
    size: int


def collect_outputs(out_dir: Path, limits: Limits) -> list[OutputFile]:
    """The files to publish, sorted by name; ``LimitExceeded`` for the first rule broken."""
    with os.scandir(out_dir) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    if len(entries) > limits.max_artifact_count:
        raise LimitExceeded(
            f"artifact limit exceeded: {len(entries)} files, max {limits.max_artifact_count}",
            code="artifact_count",
        )
    files: list[OutputFile] = []
    for entry in entries:
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode) else "special"
            raise LimitExceeded(
                f"invalid artifact: {entry.name!r} is {kind}; only regular files in out/ are stored",
                code="artifact_type",
            )
        try:
            layout.validate_artifact_name(entry.name)
        except ValidationFailed as exc:
            raise LimitExceeded(f"invalid artifact name {entry.name!r}: {exc.detail}", code="artifact_name") from None
        if st.st_size > limits.max_artifact_size:
            raise LimitExceeded(
                f"artifact size limit exceeded: {entry.name!r} is {st.st_size} bytes, max {limits.max_artifact_size}",
                code="artifact_size",
            )
        files.append(OutputFile(entry.name, Path(entry.path), st.st_size))
    return files
