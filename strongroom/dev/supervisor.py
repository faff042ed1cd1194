"""Restart a `strongroom dev` child that exited, alone, with exponential backoff, and say so.

Whatever ended it (a crash, the OOM killer, a Redis outage that outlasted Celery's patience, ``kill -9`` by hand),
one dead child must not take the API, the worker and beat down with it. A child that ran for ``STABLE_AFTER``
seconds starts again from the shortest delay; one that keeps dying right after each start (a bad setting, a
port taken) makes the supervisor give up after ``MAX_QUICK_RESTARTS`` tries so the developer sees the error
instead of an endless loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shared.logging import get_logger
from strongroom.dev.servers import ManagedProcess

BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # seconds before restart number 1, 2, 3...; the last repeats
STABLE_AFTER = 60.0  # seconds of running that reset the backoff
MAX_QUICK_RESTARTS = 6

log = get_logger("strongroom.dev")


class GaveUp(Exception):
    """A child kept exiting right after each restart."""


@dataclass
class _Schedule:
    started: float
    quick_restarts: int = 0
    due: float | None = None  # when the pending restart happens; None while the child runs


@dataclass
class Supervisor:
    children: Sequence[ManagedProcess]
    say: Callable[[str], None] = print
    clock: Callable[[], float] = time.monotonic
    _schedules: dict[str, _Schedule] = field(default_factory=dict)

    def check(self) -> None:
        """One pass: schedule a restart for each newly dead child, start those whose delay has passed."""
        now = self.clock()
        for child in self.children:
            schedule = self._schedules.setdefault(child.name, _Schedule(started=now))
            if child.running():
                continue
            if schedule.due is None:
                self._schedule(child, schedule, now)
            elif now >= schedule.due:
                child.start()
                schedule.started, schedule.due = now, None
                log.warning("child restarted", child=child.name, pid=child.pid)

    def _schedule(self, child: ManagedProcess, schedule: _Schedule, now: float) -> None:
        if now - schedule.started >= STABLE_AFTER:
            schedule.quick_restarts = 0
        if schedule.quick_restarts >= MAX_QUICK_RESTARTS:
            raise GaveUp(f"{child.name} exited {MAX_QUICK_RESTARTS + 1} times in a row soon after starting")
        delay = BACKOFF[min(schedule.quick_restarts, len(BACKOFF) - 1)]
        schedule.quick_restarts += 1
        schedule.due = now + delay
        code = child.returncode()
        log.error("child exited; restarting it", child=child.name, code=code, restart_in=delay)
        self.say(f"strongroom dev: {child.name} exited (code {code}); restarting it in {delay:g}s")
