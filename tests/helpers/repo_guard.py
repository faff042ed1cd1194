"""Fail a test that reads a folder beside the checkout.

CI may run with folders next to the clone that a user's clone does not have; a test that read one
passed in CI and failed for everyone else. This audit hook (PEP 578) turns any ``open`` of a path under the
checkout's parent directory, but outside the checkout itself, into an error. Temporary directories, the venv and
site-packages are not beside the checkout, so they stay readable. Hidden siblings (``../.cache``) are allowed:
tools keep caches there, never project data. Neither is anything under the system temporary directory: a
checkout cloned into ``/tmp`` shares its parent with every test's ``tmp_path``, and there the guard steps back.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

_installed: list[Path] = []


class OutsideRepositoryError(PermissionError):
    """A test opened a file beside the repository, which a user's clone does not have."""


def forbidden(path: str | bytes | os.PathLike[Any], root: Path, temp: Path | None = None) -> bool:
    """True when ``path`` lies in ``root``'s parent directory but not inside ``root``, a hidden sibling or
    ``temp`` (the system temporary directory by default)."""
    parent = root.parent
    temp = temp or Path(os.path.realpath(tempfile.gettempdir()))
    if parent == Path(parent.anchor):  # a checkout at / or /x has no meaningful siblings
        return False
    try:
        target = Path(os.path.abspath(os.fsdecode(path)))
    except (TypeError, ValueError):
        return False
    if target == root or root in target.parents:
        return False
    if parent not in target.parents:
        return False
    if target == temp or temp in target.parents:
        return False
    sibling = target.relative_to(parent).parts[0]
    return not sibling.startswith(".")


def install(root: Path) -> None:
    """Install the hook once per process (audit hooks cannot be removed)."""
    if _installed:
        return
    root = root.resolve()
    _installed.append(root)
    # Now, not inside the hook: the first gettempdir() opens probe files while holding tempfile's lock, and an
    # open hook calling it again then waits on that lock forever (``pytest -s`` hung at start-up).
    temp = Path(os.path.realpath(tempfile.gettempdir()))

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if (
            event == "open"
            and args
            and isinstance(args[0], (str, bytes, os.PathLike))
            and forbidden(args[0], root, temp)
        ):
            raise OutsideRepositoryError(
                f"a test opened {os.fsdecode(args[0])!r}, outside the repository {str(root)!r}: "
                "copy what the tests need into the repository"
            )

    sys.addaudithook(hook)
