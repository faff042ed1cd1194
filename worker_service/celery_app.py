"""The worker's Celery app: configured lazily from the environment, never at import time.

``app`` exists as soon as the module is imported (``celery -A worker_service.celery_app`` and the
``strongroom worker|beat`` commands need it), but settings are read only when Celery first needs its
configuration: the ``on_configure`` hook hands Celery ``shared.contracts.celery_config`` plus the beat schedule.
Signals bind the task id (and the operation id when the task has one) into structlog's context, start the
heartbeat when the worker is ready, and build ``Services`` once per process. Every process that may run agents
(the main process for the threads/solo pools, each prefork child) protects itself first: non-dumpable, so an
agent cannot read its environ or ptrace it, and a child subreaper that claims the orphans agents leave. The
prefork main process sweeps the orphans of pool processes that died.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import structlog
from celery import Celery, signals

from shared import contracts
from shared.errors import ConfigError
from shared.logging import configure as configure_logging
from shared.runtime_limits import pin_recursion_limit
from shared.settings import Settings
from worker_service.agents import sandbox
from worker_service.heartbeat import Heartbeat
from worker_service.pipeline.monitor import start_metrics_server
from worker_service.schedule import beat_schedule
from worker_service.services import Services

app = Celery("strongroom", include=["worker_service.tasks"])
log = structlog.get_logger(__name__)

ORPHAN_SWEEP_INTERVAL = 5.0  # seconds; prefork main process only


class WorkerProcess:
    """What one worker (or beat) process holds: its settings, its clients and its background threads.

    Built on first use, never at import time; Celery's signal handlers and the tasks share the one instance,
    ``process`` below, whose attributes change (no module variable is rebound).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings: Settings | None = None
        self._services: Services | None = None
        self.heartbeat: Heartbeat | None = None
        self.sweeper: threading.Event | None = None

    def settings(self) -> Settings:
        with self._lock:
            if self._settings is None:
                self._settings = Settings.from_env()
            return self._settings

    def services(self) -> Services:
        """This process's clients, built on first use (after a prefork fork, so no connection is shared)."""
        current = self.settings()
        with self._lock:
            if self._services is None:
                self._services = Services.from_settings(current)
                self._services.send_task = _send_task
            return self._services

    def forget_services(self) -> None:
        """After a fork: the parent's sockets must not be shared with the child, which builds its own."""
        with self._lock:
            self._services = None


process = WorkerProcess()


def settings() -> Settings:
    return process.settings()


def services() -> Services:
    return process.services()


def _send_task(name: str, kwargs: dict[str, Any]) -> None:
    app.send_task(name, kwargs=kwargs)


def celery_settings(current: Settings) -> dict[str, Any]:
    return {**contracts.celery_config(current), "beat_schedule": beat_schedule(current)}


@app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    sender.config_from_object(celery_settings(settings()))


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    """Connected, so Celery leaves logging alone; one structlog set-up for the whole process."""
    current = settings()
    configure_logging(current.resolved_log_format, current.log_level, process="worker")


@signals.worker_init.connect
@signals.beat_init.connect
def _pin_interpreter_limits(**_: Any) -> None:
    """py_ecc raised the recursion limit to 100000 on import; deep JSON from an agent would then crash us."""
    pin_recursion_limit()


@signals.worker_init.connect
def _protect_worker(sender: Any = None, **_: Any) -> None:
    """Before any task: the agent sandbox's host-side half, and an early word if the policy cannot be enforced
    (each run still refuses on its own, so a worker that starts anyway never runs an agent unsandboxed).

    With the prefork pool this main process runs no agents, but as a subreaper it inherits the agent processes
    of a pool process that died (their own pool process, also a subreaper, handles everything else); the orphan
    sweeper kills and reaps those. Not for the threads/solo pools: there this process *is* the agent host and
    ``RunTracker`` does the work.
    """
    sandbox.protect_worker_process(claim_orphans=True)
    if process.sweeper is None and _is_prefork(sender):
        process.sweeper = sandbox.start_orphan_sweeper(ORPHAN_SWEEP_INTERVAL)
    try:
        problem = _sandbox_problem(settings())
    except ConfigError as exc:
        problem = exc.detail
    if problem is not None:
        log.error("worker.agent_sandbox_unavailable", problem=problem)


def _is_prefork(worker: Any) -> bool:
    from celery import concurrency
    from celery.concurrency.prefork import TaskPool

    try:
        pool = concurrency.get_implementation(getattr(worker, "pool_cls", None) or app.conf.worker_pool)
    except (ImportError, KeyError, AttributeError):
        return False
    return isinstance(pool, type) and issubclass(pool, TaskPool)


def _sandbox_problem(current: Settings) -> str | None:
    """Why agents (the built-in one at least) would be refused here, or None; checked once, at start."""
    try:
        policy = sandbox.SandboxPolicy.from_settings(current)
        sandbox.check_executable(sys.executable, "", policy.identity)  # the built-in agent's interpreter
    except ConfigError as exc:
        return exc.detail
    return sandbox.probe(policy)


@signals.worker_process_init.connect
def _reset_after_fork(**_: Any) -> None:
    process.forget_services()
    sandbox.protect_worker_process(claim_orphans=True)  # the subreaper flag is not inherited across fork


@signals.task_prerun.connect
def _bind_task(task_id: str | None = None, task: Any = None, kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    structlog.contextvars.bind_contextvars(task_id=task_id, task=getattr(task, "name", None))
    operation_id = (kwargs or {}).get("operation_id")
    if isinstance(operation_id, str):
        structlog.contextvars.bind_contextvars(operation_id=operation_id)


@signals.task_postrun.connect
def _unbind_task(**_: Any) -> None:
    structlog.contextvars.unbind_contextvars("task_id", "task", "operation_id")


@signals.worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    name = getattr(sender, "hostname", None) or app.conf.get("worker_name") or "worker"
    process.heartbeat = Heartbeat(services().redis, str(name))
    process.heartbeat.start()
    start_metrics_server(services())


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    if process.heartbeat is not None:
        process.heartbeat.stop()
