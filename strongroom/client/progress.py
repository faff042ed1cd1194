"""A one-line progress bar on stderr for long downloads: no dependency, silent when stderr is not a terminal.

It stays invisible for the first ``delay`` seconds so quick downloads print nothing, and redraws at most
``rate`` times a second so a fast download does not spend its time writing to the terminal.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(
        self, label: str, *, stream: TextIO | None = None, delay: float = 0.5, rate: float = 10.0, width: int = 30
    ) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._start = time.monotonic()
        self._delay, self._interval, self._width = delay, 1.0 / rate, width
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._start < self._delay:
            return
        if done < total and now - self._last_draw < self._interval:
            return
        self._last_draw = now
        fraction = done / total if total else 1.0
        filled = int(fraction * self._width)
        bar = "#" * filled + "-" * (self._width - filled)
        speed = done / max(now - self._start, 1e-6)
        self.stream.write(
            f"\r{self.label[:30]:<30} [{bar}] {fraction:6.1%} {human_size(done)}/{human_size(total)} "
            f"{human_size(int(speed))}/s"
        )
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
