"""Per-run working directories: created fresh, locked while live, removed after the run or, if the worker died
(``kill -9``, OOM), by the next sweep.

A run directory holds plaintext (the input, the agent's outputs), so none may outlive its run. Each live one is
held with an exclusive ``flock`` on its own descriptor, which the kernel drops when the process that took it
dies, however it dies. ``sweep_stale`` removes every run directory under a base whose lock it can take: no
process anywhere (another worker sharing the directory included) is using it. A sweep and a creation never
interleave: creating holds the base directory's lock shared (from ``mkdtemp`` until the new directory is
locked), sweeping holds it exclusively while it looks.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

PREFIX = "strongroom-agent-"
SWEEP_INTERVAL = 300.0  # seconds between sweeps in a running worker
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Workdir:
    """The agent's fresh directory: ``input.json``, ``in/``, ``out/``, ``tmp/`` and ``home/`` (its ``HOME``)."""

    root: Path

    @property
    def input_file(self) -> Path:
        return self.root / "input.json"

    @property
    def in_dir(self) -> Path:
        return self.root / "in"

    @property
    def out_dir(self) -> Path:
        return self.root / "out"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def home_dir(self) -> Path:
        return self.root / "home"

    def create(self) -> None:
        """The subdirectories (0700) and an empty ``input.json``."""
        for sub in (self.in_dir, self.out_dir, self.tmp_dir, self.home_dir):
            sub.mkdir(mode=0o700)
        self.input_file.touch(mode=0o600)


# out/ directories fresh_workdir created, by path: (st_dev, st_ino), so the worker can tell that the out/ it
# reads is the one it made (outputs.open_out_dir), not a directory or link put in its place.
_created_out: dict[str, tuple[int, int]] = {}
_created_lock = threading.Lock()


def created_out_dir(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of ``path`` as ``fresh_workdir`` created it; None for a directory it did not create."""
    with _created_lock:
        return _created_out.get(str(path))


def base_dir(configured: Path | None) -> Path:
    """Where run directories go: ``STRONGROOM_WORK_DIR``, else the system temp directory."""
    return configured if configured is not None else Path(tempfile.gettempdir())


@contextmanager
def _locked(path: Path, operation: int) -> Iterator[int]:
    fd = os.open(path, _DIR_FLAGS)
    try:
        fcntl.flock(fd, operation)
        yield fd
    finally:
        os.close(fd)


@contextmanager
def fresh_workdir(base: Path | None) -> Iterator[Workdir]:
    """A private (0700) run directory, locked while it lives and removed afterwards whatever happened."""
    parent = base_dir(base)
    parent.mkdir(parents=True, exist_ok=True)
    with _locked(parent, fcntl.LOCK_SH):
        root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
        lock = os.open(root, _DIR_FLAGS)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new and ours: cannot be contended
    workdir = Workdir(root)
    key = str(workdir.out_dir)
    try:
        workdir.create()
        st = workdir.out_dir.lstat()
        with _created_lock:
            _created_out[key] = (st.st_dev, st.st_ino)
        yield workdir
    finally:
        with _created_lock:
            _created_out.pop(key, None)
        shutil.rmtree(root, ignore_errors=True)
        os.close(lock)


def sweep_stale(base: Path | None) -> int:
    """Remove run directories under ``base`` that no live process holds; how many were removed."""
    parent = base_dir(base)
    if not parent.is_dir():
        return 0
    stale: list[tuple[Path, int]] = []
    with _locked(parent, fcntl.LOCK_EX):
        for entry in os.scandir(parent):
            if not entry.name.startswith(PREFIX):
                continue
            fd = _take_if_dead(Path(entry.path))
            if fd is not None:
                stale.append((Path(entry.path), fd))
    for path, fd in stale:  # still locked by us: nobody can be handed this directory
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
    if stale:
        log.warning("workdir.stale_removed", count=len(stale), base=str(parent))
    return len(stale)


def _take_if_dead(path: Path) -> int | None:
    """A locked descriptor of ``path`` if it is our own real directory and nobody holds it; else None."""
    try:
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            return None
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a live run holds it
        os.close(fd)
        return None
    return fd


def start_sweeper(base: Path | None, interval: float = SWEEP_INTERVAL) -> threading.Event:
    """``sweep_stale`` every ``interval`` seconds in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                sweep_stale(base)
            except OSError as exc:
                log.warning("workdir.sweep_failed", error=exc.strerror)

    threading.Thread(target=loop, name="workdir-sweeper", daemon=True).start()
    return stop
