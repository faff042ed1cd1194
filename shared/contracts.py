"""Everything that crosses Redis between the API and the worker: task names, payloads and queue settings.

Task names carry a version (``strongroom.v1.*``): a payload change that old workers cannot read gets a new name,
so a rolling deploy never feeds a worker a message it misreads. Payloads are small JSON objects of ids, never file
contents. The API sends tasks by name (it never imports the worker); the worker registers handlers under the same
names.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from shared.settings import Settings

QUEUE = "strongroom"


class TaskMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    TASK: ClassVar[str]


class RunOperation(TaskMessage):
    TASK = "strongroom.v1.run_operation"
    operation_id: str


class CancelOperation(TaskMessage):
    TASK = "strongroom.v1.cancel_operation"
    operation_id: str
    request_id: str | None = None
    actor: str | None = None


# Periodic jobs (Celery beat) take no payload.
CLEANUP_EXPIRED = "strongroom.v1.cleanup_expired_artifacts"
MONITOR_RESOURCES = "strongroom.v1.monitor_resource_usage"
ROTATE_KEYS = "strongroom.v1.rotate_keys"
PERSIST_AUDIT = "strongroom.v1.persist_audit_events"
SWEEP_ORPHANS = "strongroom.v1.sweep_orphans"
HEARTBEAT = "strongroom.v1.heartbeat"


def celery_config(settings: Settings) -> dict[str, Any]:
    """One Celery configuration for producer (API) and consumer (worker): JSON only, late acks, prefetch 1."""
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_track_started": True,
        "result_expires": 3600,
        "broker_connection_retry_on_startup": True,
        # Redis redelivers unacked messages after this: the agent time limit plus hours of uploads (a copy of a
        # live run is a no-op anyway; lost runs are redelivered sooner by the monitor).
        "broker_transport_options": {"visibility_timeout": settings.max_execution_time + 6 * 3600},
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "timezone": "UTC",
    }
