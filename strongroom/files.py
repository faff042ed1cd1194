"""Files holding secrets (keyrings, identities, credentials): written whole and private, or not at all.

Used by the keyring commands in production and by the dev stack alike, so it lives outside ``strongroom.dev``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_private(path: Path, text: str, *, overwrite: bool = True) -> None:
    """Write a secret file atomically with mode 0600 from the start.

    The text goes to a 0600 temporary file in the same directory, is fsynced, then renamed over ``path``: a crash
    or a full disk leaves the old file whole (a keyring truncated half-way would lose every key). With
    ``overwrite=False`` an existing ``path`` is an error (``FileExistsError``), never silently replaced.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path exists, atomically
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
