"""Checks on what an agent left in ``out/`` before anything is published, and the one safe way to read it.

All-or-nothing: one violation fails the operation with a summary naming the limit, and nothing is stored. Only
regular files directly in ``out/`` with a single name count; a directory, a symlink or a hard-linked file is
refused rather than skipped, so an agent never "succeeds" with a silently shorter result than it meant to produce
(and a hard link to a file outside ``out/``, such as the keyring, is never published).

The worker (often root) reads what an untrusted agent wrote, so no path is trusted beyond ``out/`` itself:
``open_out_dir`` opens ``out/`` once with ``O_DIRECTORY|O_NOFOLLOW`` and checks it is the directory
``fresh_workdir`` created (same device and inode), listing goes through that descriptor (``os.scandir(fd)``),
and each file is opened relative to it (``dir_fd=``) with ``O_NOFOLLOW|O_NONBLOCK``. An ``out/`` replaced by a
link to, say, the keyring's directory is refused instead of followed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared import layout
from shared.errors import StrongroomError, ValidationFailed
from worker_service.agents.runner import Limits
from worker_service.agents.workdir import created_out_dir

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class LimitExceeded(StrongroomError):
    """An agent broke a resource limit or the output protocol; ``detail`` is the operation's result.summary."""

    status = 422
    code = "limit_exceeded"
    title = "Agent limit exceeded"


@dataclass(frozen=True)
class OutputFile:
    """One collected output: its name in ``out/`` and the identity the later open must find again."""

    name: str
    path: Path
    size: int
    device: int
    inode: int
    out_dir_id: tuple[int, int]  # (st_dev, st_ino) of the out/ it was listed in


def _replaced() -> LimitExceeded:
    return LimitExceeded(
        "invalid output directory: out/ was replaced after the worker created it; nothing is stored",
        code="out_dir_replaced",
    )


@contextmanager
def open_out_dir(out_dir: Path, expected: tuple[int, int] | None = None) -> Iterator[int]:
    """A descriptor of ``out_dir`` itself, never of what a link there points to; ``LimitExceeded`` otherwise.

    Checked against ``expected`` (a previous listing's identity) and against the identity ``fresh_workdir``
    recorded when it created the directory; a directory it did not create (tests, other callers) gets the
    ``O_NOFOLLOW`` and ``expected`` checks only.
    """
    try:
        fd = os.open(out_dir, _DIR_FLAGS)
    except OSError:  # ELOOP/ENOTDIR (a link or a file in its place), ENOENT (removed)
        raise _replaced() from None
    try:
        st = os.fstat(fd)
        found = (st.st_dev, st.st_ino)
        created = created_out_dir(out_dir)
        if (created is not None and found != created) or (expected is not None and found != expected):
            raise _replaced()
        yield fd
    finally:
        os.close(fd)


def collect_outputs(out_dir: Path, limits: Limits) -> list[OutputFile]:
    """The files to publish, sorted by name; ``LimitExceeded`` for the first rule broken."""
    with open_out_dir(out_dir) as dir_fd:
        dir_st = os.fstat(dir_fd)
        with os.scandir(dir_fd) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        if len(entries) > limits.max_artifact_count:
            raise LimitExceeded(
                f"artifact limit exceeded: {len(entries)} files, max {limits.max_artifact_count}",
                code="artifact_count",
            )
        files: list[OutputFile] = []
        for entry in entries:
            try:
                st = os.stat(entry.name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                raise LimitExceeded(
                    f"invalid artifact: {entry.name!r} vanished while out/ was read", code="artifact_changed"
                ) from None
            _check_entry(entry.name, st, limits)
            listed_in = (dir_st.st_dev, dir_st.st_ino)
            files.append(OutputFile(entry.name, out_dir / entry.name, st.st_size, st.st_dev, st.st_ino, listed_in))
    return files


def _check_entry(name: str, st: os.stat_result, limits: Limits) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode) else "special"
        raise LimitExceeded(
            f"invalid artifact: {name!r} is {kind}; only regular files in out/ are stored", code="artifact_type"
        )
    if st.st_nlink != 1:  # another name for the same file, possibly somewhere only the worker may read
        raise LimitExceeded(
            f"invalid artifact: {name!r} has {st.st_nlink} hard links; only files with one name are stored",
            code="artifact_link",
        )
    try:
        layout.validate_artifact_name(name)
    except ValidationFailed as exc:
        raise LimitExceeded(f"invalid artifact name {name!r}: {exc.detail}", code="artifact_name") from None
    if st.st_size > limits.max_artifact_size:
        raise LimitExceeded(
            f"artifact size limit exceeded: {name!r} is {st.st_size} bytes, max {limits.max_artifact_size}",
            code="artifact_size",
        )


def open_output_fd(item: OutputFile) -> int:
    """A descriptor of ``item`` as ``collect_outputs`` saw it, opened through the same ``out/``; the caller closes.

    ``O_NOFOLLOW`` refuses a symlink swapped in, ``O_NONBLOCK`` keeps a FIFO from blocking the open, and the
    descriptor must be the same regular file (device, inode, size) that was collected.
    """
    with open_out_dir(item.path.parent, item.out_dir_id) as dir_fd:
        try:
            fd = os.open(item.name, FILE_FLAGS, dir_fd=dir_fd)
        except OSError:  # ELOOP (a symlink), ENOENT (removed), ENXIO (a FIFO without writer)...
            raise changed(item) from None
    try:
        st = os.fstat(fd)
        same = (st.st_dev, st.st_ino, st.st_size, st.st_nlink) == (item.device, item.inode, item.size, 1)
        if not stat.S_ISREG(st.st_mode) or not same:
            raise changed(item)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def changed(item: OutputFile) -> LimitExceeded:
    return LimitExceeded(f"invalid artifact: {item.name!r} changed after the agent finished", code="artifact_changed")
