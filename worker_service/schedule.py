"""Celery beat's schedule, from the settings' intervals.

Run exactly one beat. A second one is harmless, not useful: every periodic task takes a Redis lock
(``layout.redis_job_lock``) and skips when another run holds it. Each entry expires after its own interval, so
a backlog built while workers were down is dropped rather than replayed.
"""

from __future__ import annotations

from typing import Any

from shared import contracts
from shared.settings import Settings

AUDIT_INTERVAL = 5.0  # seconds: events reach the S3 access log this soon after the API publishes them


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    every = {
        contracts.CLEANUP_EXPIRED: float(settings.cleanup_interval),
        contracts.SWEEP_ORPHANS: float(settings.cleanup_interval),
        contracts.MONITOR_RESOURCES: float(settings.monitor_interval),
        contracts.ROTATE_KEYS: float(settings.rotation_interval),
        contracts.PERSIST_AUDIT: AUDIT_INTERVAL,
    }
    return {
        task.rsplit(".", 1)[-1]: {"task": task, "schedule": seconds, "options": {"expires": seconds}}
        for task, seconds in every.items()
    }
