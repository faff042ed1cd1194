"""`strongroom dev`: the whole system on one machine, with embedded Redis and S3 unless configured otherwise.

State lives under ``--data-dir``: Valkey's append-only file, SeaweedFS's volumes, a generated keyring and
generated S3 credentials (both 0600), so stopping and starting again finds every operation and artifact. Once its
servers run it records the connection settings it chose in ``connection.json`` there (``strongroom.connection``:
what lets ``strongroom audit verify`` and the other admin commands reach this stack with nothing exported). Each
child runs in its own process group with a parent-death signal; SIGINT/SIGTERM stop them all within 10 seconds.
A child that exits once the stack is ready is restarted alone, with backoff (``strongroom.dev.supervisor``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

import httpx

from shared.auth.base import normalize_authority
from shared.errors import ConfigError
from shared.logging import configure, get_logger
from shared.settings import Settings
from strongroom import connection
from strongroom.dev.servers import (
    EmbeddedServerError,
    ManagedProcess,
    S3Credentials,
    SeaweedServer,
    ValkeyServer,
    wait_for,
)
from strongroom.dev.supervisor import GaveUp, Supervisor
from strongroom.files import write_private

_WILDCARD_BINDS = frozenset({"0.0.0.0", "::"})  # noqa: S104 (recognising a wildcard bind, not binding one)
STOP_BUDGET = 9.0  # seconds for SIGTERM-then-SIGKILL of every child; the issue allows 10
READY_TIMEOUT = 120.0

log = get_logger("strongroom.dev")


def _prepare_env(args: argparse.Namespace, data_dir: Path, base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    env.setdefault("STRONGROOM_ENV", "development")
    env["STRONGROOM_API_HOST"] = args.host
    env["STRONGROOM_API_PORT"] = str(args.port)
    env.setdefault("STRONGROOM_S3_CORS_ORIGINS", local_url(args.host, args.port))  # the page's origin, as printed
    env.setdefault("STRONGROOM_PUBLIC_AUTHORITIES", ",".join(dev_authorities(args.host, args.port)))
    env.setdefault("STRONGROOM_WORK_DIR", str(data_dir / "work"))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _sandbox_problem(settings: Settings) -> str | None:
    """Why the worker could not sandbox agents here (said before anything starts), or None."""
    from worker_service.agents import sandbox

    try:
        return sandbox.probe(sandbox.SandboxPolicy.from_settings(settings))
    except ConfigError as exc:
        return exc.detail


def local_url(host: str, port: int) -> str:
    """The API's URL from this machine: a wildcard bind is reached (and may be signed for) by its loopback name."""
    if host in _WILDCARD_BINDS:
        host = "127.0.0.1"  # one of the names dev_authorities gives a wildcard bind (IPv6 "::" takes IPv4 too)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def dev_authorities(host: str, port: int) -> list[str]:
    """The ``@authority`` values a local client may sign: the bound address, plus the loopback names that reach it.

    Pinned even in development so `strongroom dev` runs the same authority check as production. A wildcard bind
    (``0.0.0.0``, ``::``) gets the loopback names only: set STRONGROOM_PUBLIC_AUTHORITIES for other hosts' names.
    """
    names = [] if host in _WILDCARD_BINDS else [f"[{host}]" if ":" in host else host]
    if host in ("127.0.0.1", "localhost") or host in _WILDCARD_BINDS:
        names += ["127.0.0.1", "localhost"]
    if host == "::1":
        names += ["[::1]", "localhost"]
    authorities = [normalize_authority(f"{name}:{port}", "http") for name in names]
    return list(dict.fromkeys(authorities))


def _dev_keyring(path: Path) -> Path:
    """A development keyring kept next to the data it protects (never generated in production)."""
    if not path.exists():
        from shared.crypto.keyring import Keyring

        write_private(path, Keyring.generate_json())
        log.info("generated a development keyring", path=str(path))
    return path


class DevStack:
    """The embedded servers (when needed) and the api/worker/beat children of one `strongroom dev` run."""

    def __init__(self, args: argparse.Namespace, data_dir: Path) -> None:
        self.args = args
        self.data_dir = data_dir
        self.servers: list[ValkeyServer | SeaweedServer] = []
        self.children: list[ManagedProcess] = []
        self.env = _prepare_env(args, data_dir, os.environ)
        self.credentials_file: Path | None = None  # the embedded S3's, when dev started one

    def check_settings(self) -> Settings:
        """Validate everything before starting anything; the embedded servers fill in Redis and S3 later."""
        placeholder = {"REDIS_URL": "redis://127.0.0.1:6379/0"}
        return Settings.from_env({**placeholder, **self.env})

    def start_servers(self) -> None:
        if not self.env.get("STRONGROOM_KEYRING") and not self.env.get("STRONGROOM_KEYRING_FILE"):
            if self.env.get("STRONGROOM_S3_ENDPOINT_URL"):
                # Records sealed with a key that only this data dir holds would be unreadable by the real API.
                raise ConfigError(
                    "STRONGROOM_KEYRING", "is required when `strongroom dev` uses an external S3 (or set _FILE)"
                )
            self.env["STRONGROOM_KEYRING_FILE"] = str(_dev_keyring(self.data_dir / "keyring.json"))
        if not (self.env.get("REDIS_URL") or self.env.get("STRONGROOM_REDIS_URL")):
            redis = ValkeyServer(self.data_dir / "valkey", port=_remembered_port(self.data_dir / "valkey.port"))
            self.servers.append(redis)
            redis.start()
            (self.data_dir / "valkey.port").write_text(str(redis.port))
            self.env["REDIS_URL"] = redis.url
            log.info("embedded valkey started", url=redis.url, pid=redis.pid)
        if not self.env.get("STRONGROOM_S3_ENDPOINT_URL"):
            self.credentials_file = self.data_dir / "s3-credentials.json"
            creds = S3Credentials.load_or_create(self.credentials_file)
            region = self.env.get("AWS_REGION", "us-east-1")
            origins = tuple(o for o in self.env["STRONGROOM_S3_CORS_ORIGINS"].split(",") if o.strip())
            s3 = SeaweedServer(self.data_dir / "seaweedfs", creds, region=region, cors_origins=origins)
            self.servers.append(s3)
            s3.start()
            self.env.update(
                STRONGROOM_S3_ENDPOINT_URL=s3.endpoint_url,
                AWS_ACCESS_KEY_ID=creds.access_key,
                AWS_SECRET_ACCESS_KEY=creds.secret_key,
                AWS_REGION=region,
            )
            log.info("embedded seaweedfs started", endpoint=s3.endpoint_url, pid=s3.pid)

    def start_children(self) -> None:
        python = [sys.executable, "-m", "strongroom"]
        concurrency = str(self.args.concurrency)
        # --quiet: no Celery banners; the console keeps one line a service (errors and logs still come through).
        commands = {
            "api": [*python, "api"],
            "worker": [*python, "worker", "--quiet", "--pool", "threads", "--concurrency", concurrency],
            "beat": [*python, "beat", "--quiet", "--schedule", str(self.data_dir / "celerybeat-schedule")],
        }
        envs = {"worker": worker_env(self.env)}
        for name, argv in commands.items():
            child = ManagedProcess(argv, log_path=None, env=envs.get(name, self.env), name=name)
            self.children.append(child)  # registered first: a signal between the two lines still stops it
            child.start()
            log.info("started", child=name, pid=child.pid)

    def dead_child(self) -> ManagedProcess | None:
        return next((c for c in self.children if not c.running()), None)

    def stop(self) -> None:
        """SIGTERM every child and server at once, then SIGKILL whatever is left when the budget runs out."""
        deadline = time.monotonic() + STOP_BUDGET
        for child in self.children:
            child.signal_group(signal.SIGTERM)
        for child in self.children:
            child.stop(max(0.1, deadline - 3 - time.monotonic()), signalled=True)
        for server in reversed(self.servers):
            server.stop(max(0.1, deadline - time.monotonic()))


def command_path(cwd: Path, executable: str = sys.executable, path_env: str | None = None) -> tuple[str, bool]:
    """How to type ``strongroom`` (shell-quoted) so that it runs this installation, and whether that is the bare name.

    ``make dev`` runs ``.venv/bin/strongroom`` without activating the venv, so a bare ``strongroom`` in another
    terminal is usually "command not found": print the script's path then (relative when it lies below ``cwd``).
    """
    script = Path(executable).parent / "strongroom"
    if not script.exists():
        return f"{shlex.quote(executable)} -m strongroom", False
    found = shutil.which("strongroom", path=os.environ.get("PATH") if path_env is None else path_env)
    if found and Path(found).resolve() == script.resolve():
        return "strongroom", True
    try:
        return shlex.quote(str(script.absolute().relative_to(cwd))), False
    except ValueError:
        return shlex.quote(str(script.absolute())), False


def next_steps(
    url: str, data_dir: Path, cwd: Path, *, executable: str = sys.executable, path_env: str | None = None
) -> list[str]:
    """The banner's commands, to be run in another terminal in ``cwd`` exactly as printed."""
    from strongroom.client.defaults import DEFAULT_API_URL

    program, on_path = command_path(cwd, executable, path_env)
    client = program if url == DEFAULT_API_URL else f"STRONGROOM_API_URL={url} {program}"
    here = data_dir == (cwd / ".strongroom").resolve()  # then the admin commands find the stack by themselves
    where = "" if here else f" --data-dir {shlex.quote(str(data_dir))}"
    lines = [
        "  next, in another terminal in this directory:",
        f"    {client} client keygen",
        f'    {client} client create --text "mail me at a@b.example"',
        f"    {program} audit verify <operation-id>{where}",
    ]
    script = Path(shlex.split(program)[0])
    if not on_path and script.name == "strongroom":
        activate = shlex.quote(str(script.parent / "activate"))
        lines.append(f"  (or run `. {activate}` once, then type plain `strongroom ...`)")
    return lines


# Celery warns that a worker running as root is "absolutely not recommended" (its C_FORCE_ROOT check). `strongroom
# dev` runs as whoever started it, in a container often root, and agents never run with the worker's rights: each
# run is in its own bubblewrap sandbox (user namespace, no view of the keyring or credentials). So dev says that
# once and silences exactly this warning for its own worker; `strongroom worker` elsewhere still shows it (the
# image and the chart run as uid 10001).
ROOT_WARNING = "You're running the worker with superuser privileges"


def worker_env(env: Mapping[str, str], euid: int | None = None) -> dict[str, str]:
    """The dev worker's environment: as root, with Celery's superuser warning filtered (said once, here, instead)."""
    if (os.geteuid() if euid is None else euid) != 0:
        return dict(env)
    log.info("the dev worker runs as root, as you do: Celery's superuser warning is silenced for it (development only)")
    rule = f"ignore:{ROOT_WARNING}"
    existing = env.get("PYTHONWARNINGS")
    return {**env, "PYTHONWARNINGS": f"{existing},{rule}" if existing else rule}


def _remembered_port(path: Path) -> int | None:
    """Reuse the last Valkey port so REDIS_URL stays the same across restarts when the port is still free."""
    from strongroom.dev.servers import port_is_free

    try:
        port = int(path.read_text())
    except (OSError, ValueError):
        return None
    return port if port_is_free(port) else None


def _api_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


class _Stop(Exception):
    pass


def run_dev(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    stack = DevStack(args, data_dir)
    settings = stack.check_settings()
    configure(settings.resolved_log_format, settings.log_level, process="dev")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per readiness poll
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        raise _Stop

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        code = _serve(stack, stopping)
    except _Stop:
        code = 0
    except EmbeddedServerError as exc:
        log.error("dev failed", error=exc.detail)
        code = 1
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the shutdown
        log.info("stopping")
        stack.stop()
        log.info("stopped")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def _serve(stack: DevStack, stopping: threading.Event) -> int:
    from strongroom.cli.server import initialise

    stack.start_servers()
    settings = Settings.from_env(stack.env)
    if (problem := _sandbox_problem(settings)) is not None:
        log.error("agents cannot be sandboxed here", problem=problem, escape_hatch="STRONGROOM_AGENT_SANDBOX=none")
        return 1
    initialise(settings)
    url = local_url(settings.api_host, settings.api_port)
    # Before the children: once dev says ready, `strongroom audit verify ...` finds the stack without any export.
    published = connection.write(stack.data_dir, stack.env, api_url=url, credentials_file=stack.credentials_file)
    try:
        return _run(stack, stopping, settings, url)
    finally:
        published.close()  # stopped: the admin commands must not find it any more


def _run(stack: DevStack, stopping: threading.Event, settings: Settings, url: str) -> int:
    stack.start_children()
    print(f"strongroom API: {url}", flush=True)

    def alive() -> bool:
        return stack.dead_child() is None

    wait_for(lambda: _api_ready(url), timeout=READY_TIMEOUT, what="strongroom (GET /readyz)", alive=alive)
    log.info("ready", api=url, data_dir=str(stack.data_dir), agent_sandbox=settings.agent_sandbox)
    if settings.agent_sandbox == "none":
        log.warning("development: agents run WITHOUT a sandbox (STRONGROOM_AGENT_SANDBOX=none): they see your files")
    print(f"strongroom ready: {url} (Ctrl-C stops everything)", flush=True)
    print(f"  browser page: {url}/app/   API reference: {url}/api/v1/openapi.json", flush=True)
    for line in next_steps(url, stack.data_dir, Path.cwd()):
        print(line, flush=True)
    supervisor = Supervisor(stack.children, say=lambda line: print(line, flush=True))
    while not stopping.is_set():
        try:
            supervisor.check()
        except GaveUp as exc:
            log.error("child keeps exiting; stopping everything", problem=str(exc))
            return 1
        time.sleep(0.5)
    return 0
