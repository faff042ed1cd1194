"""`strongroom api|worker|beat|init|dev|keyring`: the server-side processes.

``api``, ``worker`` and ``beat`` each run one process against the configured Redis and S3 (what containers run);
``init`` prepares the bucket idempotently; ``dev`` runs everything on one machine with embedded servers
(``strongroom.dev.stack``). Settings are validated before anything starts: a bad value prints one line naming the
variable and exits 2, with no traceback. Everything a process needs is imported inside its command, so
``strongroom client ...`` never pays for the servers, and a client-only install (``pip install strongroom``)
answers a server command with the extra to install instead of a traceback.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import CONFIG_EXIT, ConfigError, StrongroomError

if TYPE_CHECKING:
    from shared.settings import Settings

OWN_PACKAGES = frozenset({"shared", "strongroom", "api_service", "worker_service"})

Handler = Callable[[argparse.Namespace], int]


def fails_cleanly(handler: Handler) -> Handler:
    """Turn configuration and dependency errors into one line on stderr and a non-zero exit (no traceback)."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ConfigError as exc:
            print(f"strongroom {args.command}: configuration error: {exc.detail}", file=sys.stderr)
            return CONFIG_EXIT
        except StrongroomError as exc:
            print(f"strongroom {args.command}: {exc.detail}", file=sys.stderr)
            return 1
        except ModuleNotFoundError as exc:
            if not exc.name or exc.name.partition(".")[0] in OWN_PACKAGES:
                raise
            extra = "embedded" if args.command == "dev" else "server"
            print(
                f"strongroom {args.command}: needs the {extra} dependencies (missing {exc.name}): "
                f"pip install 'strongroom[{extra}]'",
                file=sys.stderr,
            )
            return CONFIG_EXIT
        except OSError as exc:  # e.g. `keyring rotate` on a read-only mount
            where = f" ({exc.filename})" if exc.filename else ""
            print(f"strongroom {args.command}: {exc.strerror or exc}{where}", file=sys.stderr)
            return 1
        except Exception as exc:
            if not _is_redis_error(exc):
                raise
            print(f"strongroom {args.command}: cannot reach Redis ({exc})", file=sys.stderr)
            return 1

    return run


def _is_redis_error(exc: Exception) -> bool:
    """Without importing redis (the client install has none): is ``exc`` one of redis-py's errors?"""
    return any(cls.__module__ == "redis.exceptions" and cls.__name__ == "RedisError" for cls in type(exc).__mro__)


def load_settings(process: str, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Validate the environment (``os.environ`` unless given), then configure logging for this process."""
    from shared.logging import configure
    from shared.settings import Settings

    settings = Settings.from_env(environ, **overrides)
    settings.keyring_json()  # a missing keyring file is a start-up error, not a first-request error
    configure(settings.resolved_log_format, settings.log_level, process=process)
    return settings


# --- api ---------------------------------------------------------------------------------------------------------


@fails_cleanly
def run_api(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["api_host"] = args.host
    if args.port:
        overrides["api_port"] = args.port
    settings = load_settings("api", **overrides)
    settings.validate_api()
    from api_service.app import create_app
    from api_service.serve import serve
    from shared.grants import grant_source_at_start
    from shared.logging import get_logger

    # Loaded once, here: a missing or invalid grants file stops the start with one line, before anything listens,
    # and the app serves with this very source.
    app = create_app(settings, grants=grant_source_at_start(settings, process="api"))
    get_logger(__name__).info(
        "api starting", host=settings.api_host, port=settings.api_port, metrics_port=settings.api_metrics_port
    )
    serve(app, settings)
    return 0


# --- worker and beat ---------------------------------------------------------------------------------------------


def _celery_app() -> Any:
    from worker_service.celery_app import app

    return app


@fails_cleanly
def run_worker(args: argparse.Namespace) -> int:
    from shared.contracts import QUEUE

    settings = load_settings("worker")
    argv = [
        "worker",
        "--loglevel",
        settings.log_level,
        "-Q",
        QUEUE,
        "--pool",
        args.pool,
        "--concurrency",
        str(args.concurrency),
        "--without-mingle",  # start-up sync with peers only slows small deployments down
        "--without-gossip",
    ]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    _celery_app().worker_main(argv=_quiet(args) + argv)
    return 0


@fails_cleanly
def run_beat(args: argparse.Namespace) -> int:
    settings = load_settings("beat")
    # Default: a private directory of this run (a fixed name in the shared temp dir could be planted by another
    # user); losing it on restart only means the periodic jobs may run once early, which their locks make safe.
    schedule = args.schedule or str(Path(tempfile.mkdtemp(prefix="strongroom-beat-")) / "celerybeat-schedule")
    _celery_app().start(argv=[*_quiet(args), "beat", "--loglevel", settings.log_level, "--schedule", schedule])
    return 0


def _quiet(args: argparse.Namespace) -> list[str]:
    """Celery's global ``--quiet``: no start-up banner. It prints nothing else; logs and errors are unchanged."""
    return ["--quiet"] if args.quiet else []


# --- init --------------------------------------------------------------------------------------------------------


def initialise(settings: Settings) -> None:
    """Create the bucket and apply CORS and the lifecycle backstop; safe to run any number of times.

    Nothing secret is generated here: production must bring its own keyring (``strongroom keyring generate``).
    """
    from shared.crypto.keyring import Keyring
    from shared.logging import get_logger
    from shared.storage.s3 import S3ObjectStore

    keyring = settings.keyring_json()
    if keyring:
        Keyring.from_json(keyring)
    elif settings.env == "production":
        raise ConfigError(
            "STRONGROOM_KEYRING", "is required in production (create one with `strongroom keyring generate`)"
        )
    store = S3ObjectStore.from_settings(settings)
    # The backstop outlives the longest retention by a day: the cleanup job, not S3, normally deletes.
    store.ensure_bucket(cors_origins=settings.s3_cors_origins, expire_after_days=settings.lifecycle_days)
    store.ping()
    get_logger(__name__).info("bucket ready", bucket=settings.s3_bucket)


@fails_cleanly
def run_init(args: argparse.Namespace) -> int:
    initialise(load_settings("init"))
    return 0


# --- keyring helpers ---------------------------------------------------------------------------------------------


@fails_cleanly
def run_keyring(args: argparse.Namespace) -> int:
    """``generate`` prints a new keyring; ``rotate FILE`` adds a new primary key to a keyring file in place."""
    from shared.crypto.keyring import Keyring
    from strongroom.files import write_private

    if args.keyring_command == "generate":
        text = Keyring.generate_json()
        if args.output:
            try:
                write_private(Path(args.output), text, overwrite=args.force)
            except FileExistsError:
                raise ConfigError(
                    "--output", f"{args.output} exists: it may be a live keyring (use --force to replace it)"
                ) from None
        else:
            print(text)
        return 0
    path = _keyring_file(args)
    try:
        original = path.read_text()
    except OSError as exc:
        raise ConfigError("STRONGROOM_KEYRING_FILE", f"cannot be read ({exc.strerror})") from None
    rotated = Keyring.from_json(original).add_primary()
    write_private(path.with_name(path.name + ".bak"), original)  # the previous keyring, in case of doubt
    write_private(path, rotated.to_json())
    print(
        f"new primary key {rotated.primary_id} in {path}; older keys kept for decryption "
        "(restart the services to seal with it)",
        file=sys.stderr,
    )
    return 0


def _keyring_file(args: argparse.Namespace) -> Path:
    """``FILE`` if given, else STRONGROOM_KEYRING_FILE, else the keyring of the dev stack (``--data-dir``)."""
    if args.file:
        return Path(args.file)
    from strongroom.connection import admin_environ

    environ = admin_environ(args.data_dir, os.environ, Path.cwd(), require_running=False)
    if environ.get("STRONGROOM_KEYRING_FILE"):
        return Path(environ["STRONGROOM_KEYRING_FILE"])
    raise ConfigError(
        "FILE", "name the keyring file (or set STRONGROOM_KEYRING_FILE, or give the --data-dir of `strongroom dev`)"
    )


# --- dev -----------------------------------------------------------------------------------------------------------


@fails_cleanly
def run_dev(args: argparse.Namespace) -> int:
    from strongroom.dev.stack import run_dev as run_stack

    return run_stack(args)


# --- registration ------------------------------------------------------------------------------------------------


def add_data_dir_option(parser: argparse.ArgumentParser, uses: str = "Redis, S3 and keyring") -> None:
    """``--data-dir``: use the connection settings a `strongroom dev` wrote there."""
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"use the {uses} of the `strongroom dev` with this data dir (default: ./.strongroom or a "
        "parent's, when no REDIS_URL, S3 endpoint or keyring variable is set)",
    )


def register(sub: Any) -> None:
    api = sub.add_parser("api", help="run the HTTP API (uvicorn)")
    api.add_argument("--host", help="listen address (default STRONGROOM_API_HOST)")
    api.add_argument("--port", type=int, help="listen port (default STRONGROOM_API_PORT)")
    api.set_defaults(handler=run_api)

    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--pool", default="prefork", choices=("prefork", "threads", "solo"))
    worker.add_argument("--concurrency", type=int, default=2)
    worker.add_argument("--hostname", help="Celery node name, e.g. worker1@%%h")
    worker.add_argument("--quiet", action="store_true", help="no Celery start-up banner (logs are unchanged)")
    worker.set_defaults(handler=run_worker)

    beat = sub.add_parser("beat", help="run Celery beat (exactly one per deployment)")
    beat.add_argument("--schedule", help="beat state file (default: a private temporary directory per run)")
    beat.add_argument("--quiet", action="store_true", help="no Celery start-up banner (logs are unchanged)")
    beat.set_defaults(handler=run_beat)

    init = sub.add_parser("init", help="create the bucket and apply its configuration (idempotent)")
    init.set_defaults(handler=run_init)

    keyring = sub.add_parser("keyring", help="generate or rotate a server keyring")
    keyring_sub = keyring.add_subparsers(dest="keyring_command", required=True, metavar="COMMAND")
    generate = keyring_sub.add_parser("generate", help="print a new one-key keyring (a secret)")
    generate.add_argument("--output", help="write it to this file (mode 0600) instead of stdout")
    generate.add_argument("--force", action="store_true", help="replace an existing --output file")
    rotate = keyring_sub.add_parser("rotate", help="add a new primary key to a keyring file")
    rotate.add_argument(
        "file", nargs="?", help="keyring file (default STRONGROOM_KEYRING_FILE, else the dev stack's keyring)"
    )
    add_data_dir_option(rotate, uses="keyring")
    keyring.set_defaults(handler=run_keyring)

    dev = sub.add_parser("dev", help="run everything locally with embedded Redis and S3")
    dev.add_argument("--data-dir", default="./.strongroom", help="where all state lives (default ./.strongroom)")
    dev.add_argument("--host", default="127.0.0.1", help="API listen address (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=8080, help="API port (default 8080)")
    dev.add_argument("--concurrency", type=int, default=2, help="worker threads (default 2)")
    dev.set_defaults(handler=run_dev)
