"""The worker's Celery app: configured lazily from the environment, never at import time.

``app`` exists as soon as the module is imported (``celery -A worker_service.celery_app`` and the
``strongroom worker|beat`` commands need it), but settings are read only when Celery first needs its
configuration: the ``on_configure`` hook hands Celery ``shared.contracts.celery_config`` plus the beat schedule.
Signals bind the task id (and the operation id when the task has one) into structlog's context, start the
heartbeat when the worker is ready, and build ``Services`` once per process. At start the main process checks the
grant source (in production it must be chosen; a configuration error stops the worker there), removes
the run directories of dead runs (plaintext a killed worker left behind) and keeps doing so periodically, and
checks that it can create the agent sandbox: if not, it logs why and its heartbeat tells ``/readyz`` (every run
is refused anyway, so no agent ever runs unsandboxed). Each agent's PID namespace ends with its run, so no
process of an agent outlives it and nothing here tracks agent processes.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping
from typing import Any

import structlog
from celery import Celery, signals

from shared import contracts
from shared.errors import CONFIG_EXIT, ConfigError
from shared.grants import GrantSource, grant_source_at_start
from shared.logging import configure as configure_logging
from shared.runtime_limits import pin_recursion_limit
from shared.settings import Settings
from worker_service.agents import sandbox, workdir
from worker_service.heartbeat import Heartbeat
from worker_service.pipeline.monitor import start_metrics_server
from worker_service.schedule import beat_schedule
from worker_service.services import Services

app = Celery("strongroom", include=["worker_service.tasks"])
log = structlog.get_logger(__name__)


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
        self.grants: GrantSource | None = None  # checked at worker_init; pool processes inherit it with the fork

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
                self._services = Services.from_settings(current, grants=self.grants)
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


# Celery's own INFO lines for each run of these (beat's "Sending due task", the worker's "received" and
# "succeeded") say nothing the job's ``job.done`` line does not: DEBUG, so an idle deployment's log stays quiet.
ROUTINE_TASKS = frozenset(
    {
        contracts.PERSIST_AUDIT,
        contracts.CLEANUP_EXPIRED,
        contracts.SWEEP_ORPHANS,
        contracts.MONITOR_RESOURCES,
        contracts.ROTATE_KEYS,
        contracts.HEARTBEAT,
    }
)
ROUTINE_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.app.trace")


class RoutineTaskLines(logging.Filter):
    """Demote Celery's per-run INFO lines about a routine task to DEBUG (dropped unless DEBUG is enabled)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or _task_named(record) not in ROUTINE_TASKS:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self.logger.isEnabledFor(logging.DEBUG)


def _task_named(record: logging.LogRecord) -> object:
    """The task a Celery line is about: ``{'name': ...}`` (worker) or ``(entry, task)`` arguments (beat)."""
    args = record.args
    if isinstance(args, Mapping):
        return args.get("name")
    if isinstance(args, tuple) and len(args) == 2:
        return args[1]
    return None


def quiet_routine_tasks() -> None:
    for name in ROUTINE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RoutineTaskLines) for f in logger.filters):
            logger.addFilter(RoutineTaskLines(logger))


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    """Connected, so Celery leaves logging alone; one structlog set-up for the whole process.

    The process keeps the name its command gave it (``strongroom beat`` runs this app too: its lines say beat).
    """
    current = settings()
    process_name = structlog.contextvars.get_contextvars().get("process") or "worker"
    configure_logging(current.resolved_log_format, current.log_level, process=process_name)
    quiet_routine_tasks()


@signals.worker_init.connect
@signals.beat_init.connect
def _pin_interpreter_limits(**_: Any) -> None:
    """py_ecc raised the recursion limit to 100000 on import; deep JSON from an agent would then crash us."""
    pin_recursion_limit()


@signals.worker_init.connect
def _check_grant_source(**_: Any) -> None:
    """Before any task, in the main process: the grant source must be valid (chosen, in production; a static file
    that loads), and ``open`` in production is logged as a warning. Celery logs and ignores an exception raised by a
    signal handler, so a configuration error stops the worker here itself, the way ``strongroom`` reports one."""
    try:
        process.grants = grant_source_at_start(settings(), process="worker")  # the one load: tasks use it
    except ConfigError as exc:
        print(f"strongroom worker: configuration error: {exc.detail}", file=sys.stderr, flush=True)
        raise SystemExit(CONFIG_EXIT) from None


@signals.worker_init.connect
def _sweep_workdirs(**_: Any) -> None:
    """Before any task, in the main process: remove run directories no live run holds, then every few minutes."""
    base = settings().work_dir
    workdir.sweep_stale(base)
    if process.sweeper is None:
        process.sweeper = workdir.start_sweeper(base)


def _sandbox_problem(current: Settings) -> str | None:
    """Why agents would be refused here (bwrap missing or unable to create namespaces), or None."""
    try:
        return sandbox.probe(sandbox.SandboxPolicy.from_settings(current))
    except ConfigError as exc:
        return exc.detail


@signals.worker_process_init.connect
def _reset_after_fork(**_: Any) -> None:
    process.forget_services()


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
    problem = _sandbox_problem(settings())
    if problem is not None:
        log.error("worker.agent_sandbox_unavailable", problem=problem)
    process.heartbeat = Heartbeat(services().redis, str(name), problem=problem)
    process.heartbeat.start()
    start_metrics_server(services())


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    if process.heartbeat is not None:
        process.heartbeat.stop()
