"""Isolation primitives for agent processes: who the agent runs as, its network, and what the worker does
to keep secrets out of reach and leave no process behind.

What each primitive buys (docs/agents.md has the full model, including what is *not* isolated):

* ``protect_worker_process`` marks the worker non-dumpable (``PR_SET_DUMPABLE 0``), so a same-UID agent can
  neither read ``/proc/<worker>/environ`` (the keyring, S3 and Redis credentials) nor ptrace the worker; and makes
  it a child subreaper (``PR_SET_CHILD_SUBREAPER``), so a descendant that leaves the agent's process group
  (``setsid``, double fork) is reparented to the worker instead of init, where ``RunTracker`` can still find it.
* ``SandboxPolicy`` is built from two settings (``Settings.agent_user``, ``Settings.agent_network``):

  ``STRONGROOM_AGENT_USER``
      ``auto`` (default): ``nobody`` when the worker runs as root, the worker's own user otherwise; a user
      (name, ``uid`` or ``uid:gid``, no supplementary groups; needs root or CAP_SETUID+CAP_SETGID; root/UID 0 is
      refused); or ``self``: the worker's own user even as root (development only: agents then *are* root).
      Fail closed: a root worker never runs agents as root unless ``self`` says so, and a run whose program the
      agent user cannot reach is refused (``SandboxUnavailable``) rather than run as the worker. Empty is a
      configuration error. A separate UID is what makes ``RLIMIT_NPROC`` safe to set and keeps the keyring
      file and the worker's ``/proc`` entries out of the agent's reach.
  ``STRONGROOM_AGENT_NETWORK``
      ``allowed`` (default: command agents such as gemini need the network) or ``none``: the agent gets a private
      network namespace with only its own loopback. Needs CAP_SYS_ADMIN or unprivileged user namespaces; when
      neither is available the agent is refused (fail closed), never run with the network on.

* ``child_setup`` is what runs in the forked child before ``exec``: namespaces, identity, rlimits, no new
  privileges, death signal.
* ``RunTracker`` attributes processes to one agent run and kills them all after it (see its docstring for why
  three independent marks are used).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import pwd
import resource
import shutil
import signal
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog

from shared.errors import ConfigError
from shared.settings import Settings

log = structlog.get_logger(__name__)

AGENT_USER_VAR = "STRONGROOM_AGENT_USER"
AGENT_NETWORK_VAR = "STRONGROOM_AGENT_NETWORK"
RUN_ID_VAR = "AGENT_RUN_ID"
AGENT_MAX_PROCESSES = 1024  # RLIMIT_NPROC for a separate agent UID (counts threads of every run as that UID)
REAP_TIMEOUT = 5.0  # seconds to wait for killed descendants to disappear

Network = Literal["allowed", "none"]

_PR_SET_PDEATHSIG = 1
_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_CAP_SETGID = 6
_CAP_SETUID = 7
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


class SandboxUnavailable(ConfigError):
    """The configured isolation cannot be provided here; the agent is not started (fail closed)."""

    code = "agent_sandbox_unavailable"
    title = "Agent sandbox unavailable"


# --- libc


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_libc = _load_libc()  # resolved at import: nothing may be loaded between fork and exec


def _prctl(option: int, arg: int) -> None:
    """prctl(option, arg, 0, 0, 0); the unused arguments must be zero for some options."""
    if _libc is None:
        raise OSError(38, "prctl is not available on this platform")
    if _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _unshare(flags: int) -> None:
    if _libc is None:
        raise OSError(38, "unshare is not available on this platform")
    if _libc.unshare(ctypes.c_int(flags)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


# --- the worker process

_host_lock = threading.Lock()
_claims_orphans = False


def protect_worker_process(*, claim_orphans: bool = False) -> bool:
    """Non-dumpable + child subreaper for the calling process; True when both took effect.

    ``claim_orphans`` declares this process an agent host that starts no other long-lived children (the Celery
    worker): after each run, orphans in its subtree that no active run accounts for are killed too, which also
    catches a descendant that escaped every mark (new session, scrubbed environment) before it was first seen.
    Idempotent and cheap: ``run_agent`` calls it for every run, so the guarantee does not depend on the host.
    """
    global _claims_orphans
    with _host_lock:
        _claims_orphans = _claims_orphans or claim_orphans
    try:
        _prctl(_PR_SET_DUMPABLE, 0)
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    except OSError as exc:
        log.warning("sandbox.worker_unprotected", error=exc.strerror)
        return False
    return True


def dumpable() -> int | None:
    """This process's dumpable flag (``PR_GET_DUMPABLE``); None where prctl does not exist."""
    if _libc is None:
        return None
    return int(_libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))


def _effective_caps() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def can_switch_user() -> bool:
    caps = _effective_caps()
    return os.geteuid() == 0 or bool(caps & (1 << _CAP_SETUID) and caps & (1 << _CAP_SETGID))


# --- policy


@dataclass(frozen=True)
class AgentIdentity:
    """The UID/GID an agent runs as (no supplementary groups)."""

    uid: int
    gid: int
    name: str

    def can_search(self, directory: Path) -> bool:
        """Whether this identity may traverse ``directory`` (mode bits only; ACLs are not consulted)."""
        st = directory.stat()
        if st.st_uid == self.uid:
            return bool(st.st_mode & 0o100)
        if st.st_gid == self.gid:
            return bool(st.st_mode & 0o010)
        return bool(st.st_mode & 0o001)

    def can_reach(self, path: Path) -> bool:
        """Every directory above ``path`` (as written and with symlinks resolved) is searchable by this identity."""
        absolute = Path(os.path.abspath(path))
        parents = {*absolute.parents, *absolute.resolve().parents}
        return all(self.can_search(parent) for parent in parents)


@dataclass(frozen=True)
class SandboxPolicy:
    """Who agents run as and whether they get a network.

    ``identity`` None means "the worker's own user"; ``as_worker`` records that this was chosen on purpose
    (``self``, or ``auto`` on a non-root worker). ``run_agent`` refuses an identity-less policy on a root worker
    unless ``as_worker`` is set, so no code path runs agents as uid 0 by accident.
    """

    identity: AgentIdentity | None = None
    network: Network = "allowed"
    as_worker: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxPolicy:
        """The policy ``STRONGROOM_AGENT_USER`` and ``STRONGROOM_AGENT_NETWORK`` configure."""
        return cls.from_spec(settings.agent_user, settings.agent_network)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SandboxPolicy:
        """The same, straight from environment variables (for processes without full settings)."""
        env = os.environ if environ is None else environ
        network = env.get(AGENT_NETWORK_VAR, "").strip().lower() or "allowed"
        return cls.from_spec(env.get(AGENT_USER_VAR, AUTO), network)

    @classmethod
    def from_spec(cls, user: str, network: str) -> SandboxPolicy:
        if network not in ("allowed", "none"):
            raise ConfigError(AGENT_NETWORK_VAR, "must be 'allowed' or 'none'")
        spec = user.strip()
        identity = _identity_for(spec)
        if identity is not None and identity.uid == os.geteuid() and identity.gid == os.getegid():
            identity = None  # already that user: nothing to switch
        if identity is not None and not can_switch_user():
            raise SandboxUnavailable(AGENT_USER_VAR, "is set but the worker lacks root or CAP_SETUID/CAP_SETGID")
        policy = cls(identity, "none" if network == "none" else "allowed", as_worker=identity is None)
        policy.check_not_root()
        return policy

    def check_not_root(self) -> None:
        """``SandboxUnavailable`` if this policy would run agents as root without the operator asking for it."""
        if self.identity is None and os.geteuid() == 0 and not self.as_worker:
            raise SandboxUnavailable(
                AGENT_USER_VAR,
                "names no separate user and this worker runs as root: agents are never run as root "
                f"implicitly (set a user, or {SELF!r} to accept root agents in development)",
            )


AUTO = "auto"
SELF = "self"
DEFAULT_AGENT_USER = "nobody"  # what ``auto`` picks on a root worker


def _identity_for(spec: str) -> AgentIdentity | None:
    """``auto``, ``self`` or a user spec to an identity (None: the worker's own user, explicitly chosen).

    Empty is an error rather than ``self``: a variable blanked by templating must not quietly give agents root.
    """
    if not spec:
        raise ConfigError(AGENT_USER_VAR, f"is empty: set {AUTO!r}, {SELF!r} or a user (name, uid or uid:gid)")
    if spec == SELF:
        if os.geteuid() == 0:
            _warn_root_agents()
        return None
    if spec != AUTO:
        return _resolve_identity(spec)
    if os.geteuid() != 0:
        return None  # an unprivileged worker cannot switch users: agents share its (unprivileged) UID
    try:
        return _resolve_identity(DEFAULT_AGENT_USER)
    except ConfigError:
        raise SandboxUnavailable(
            AGENT_USER_VAR,
            f"is {AUTO!r} but this root worker has no {DEFAULT_AGENT_USER!r} user: name the user agents run as",
        ) from None


_warned_root = False


def _warn_root_agents() -> None:
    """Once per process: ``self`` on a root worker hands agents root (they can read the worker's secrets)."""
    global _warned_root
    if not _warned_root:
        _warned_root = True
        log.warning(
            "sandbox.agents_run_as_root",
            setting=f"{AGENT_USER_VAR}={SELF}",
            risk="agents can read every secret of this worker; for development only",
        )


def _resolve_identity(spec: str) -> AgentIdentity:
    user, _, group = spec.partition(":")
    try:
        if user.isascii() and user.isdigit():
            uid = int(user)
            try:
                entry: pwd.struct_passwd | None = pwd.getpwuid(uid)
            except KeyError:
                entry = None
            name = entry.pw_name if entry else user
            gid = entry.pw_gid if entry else uid
        else:
            entry = pwd.getpwnam(user)
            uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
    except KeyError:
        raise ConfigError(AGENT_USER_VAR, "names an unknown user") from None
    if group:
        if not (group.isascii() and group.isdigit()):
            raise ConfigError(AGENT_USER_VAR, "group must be numeric (uid:gid)")
        gid = int(group)
    if uid == 0 or gid == 0:
        raise ConfigError(AGENT_USER_VAR, "must not be root: the agent would regain everything the sandbox removes")
    return AgentIdentity(uid, gid, name)


# --- the working directory


def agent_base(configured: Path | None, identity: AgentIdentity | None) -> Path | None:
    """Where per-run directories go: ``configured`` unless the agent user could not reach it.

    A root worker's work dir often sits under a 0700 tree (``/root``, pytest's temp dir); the agent would then
    fail on every absolute path it is given. Rather than loosen the operator's directories, runs move to a
    worker-owned 0711 directory in the system temp dir (checked: a real directory, ours, not group/other
    writable). Nothing reachable at all: ``SandboxUnavailable``.
    """
    if identity is None:
        return configured
    if configured is not None:
        configured.mkdir(parents=True, exist_ok=True)
        if identity.can_reach(configured / "x"):
            return configured
    fallback = Path(tempfile.gettempdir()) / f"strongroom-agents-{os.geteuid()}"
    try:
        fallback.mkdir(mode=0o711, exist_ok=True)
        st = fallback.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():  # lstat: a planted symlink is refused
            raise SandboxUnavailable(AGENT_USER_VAR, f"is set but {fallback} is not the worker's own directory")
        # Search-only for others (no listing, no writing): the agent reaches its own 0700 run directory.
        os.chmod(fallback, 0o711)  # noqa: S103
    except OSError as exc:
        raise SandboxUnavailable(
            AGENT_USER_VAR, f"is set but no working directory is reachable ({exc.strerror})"
        ) from None
    if not identity.can_reach(fallback / "x"):
        raise SandboxUnavailable(AGENT_USER_VAR, "is set but the agent user cannot reach any working directory")
    if configured is not None:
        log.warning("sandbox.workdir_moved", reason="agent user cannot traverse STRONGROOM_WORK_DIR")
    return fallback


def hand_over(root: Path, writable: Iterable[Path], identity: AgentIdentity | None) -> None:
    """Give the agent user the ``writable`` subdirectories of its run directory (and what the worker put there).

    The run directory itself stays the worker's, search-only for others (0711): the agent reaches its files by
    name but cannot rename, remove or replace them, so ``out/`` stays the directory the worker created instead
    of a link to something only the worker may read. ``input.json`` becomes the agent's to read.
    """
    if identity is None:
        return
    if not identity.can_reach(root):
        raise SandboxUnavailable(AGENT_USER_VAR, "is set but the agent user cannot reach its working directory")
    os.chmod(root, 0o711)  # noqa: S103 (search only: no listing, no writing)
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):  # input.json: the agent's to read (not to replace)
                os.chown(entry.path, identity.uid, identity.gid, follow_symlinks=False)
    for sub in writable:
        for current, dirs, files in os.walk(sub):
            os.chown(current, identity.uid, identity.gid, follow_symlinks=False)
            for name in (*dirs, *files):
                os.chown(os.path.join(current, name), identity.uid, identity.gid, follow_symlinks=False)


def check_executable(argv0: str, search_path: str, identity: AgentIdentity | None) -> None:
    """Refuse early, with a reason, when the agent user could not even exec the program (a 0700 home above it)."""
    if identity is None:
        return
    found = shutil.which(argv0, path=search_path)
    if found is None:
        return  # Popen reports the missing program as it always did
    if not identity.can_reach(Path(found)):
        raise SandboxUnavailable(
            AGENT_USER_VAR,
            f"runs agents as {identity.name!r}, which cannot reach the agent program {found} (a directory above "
            f"it is not searchable): install it where that user can run it, set {AGENT_USER_VAR} to a user that "
            f"can, or to {SELF!r} for development (agents then run as the worker's own user)",
        )


# --- the child, between fork and exec


def child_setup(policy: SandboxPolicy, rlimits: Callable[[], None]) -> Callable[[], None]:
    """The ``preexec_fn``: network namespace, identity, rlimits, no_new_privs, then the death signal.

    Order matters: a network namespace needs privileges the identity switch drops (root path), or a user
    namespace created *as* the agent user (unprivileged path); a credential change clears PR_SET_PDEATHSIG,
    so that comes last. Any failure raises, and the agent is never exec'd.
    """
    identity = policy.identity

    def apply() -> None:
        isolated = False
        if policy.network == "none":
            try:
                _unshare(_CLONE_NEWNET)  # CAP_SYS_ADMIN (root worker)
                isolated = True
            except OSError:
                pass
            if isolated:
                _loopback_up()  # while we still hold CAP_NET_ADMIN
        if identity is not None:
            os.setgroups([])
            os.setresgid(identity.gid, identity.gid, identity.gid)
            os.setresuid(identity.uid, identity.uid, identity.uid)
        if policy.network == "none" and not isolated:
            _own_user_and_network_namespace()
            _loopback_up()
        rlimits()
        if identity is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (AGENT_MAX_PROCESSES, AGENT_MAX_PROCESSES))
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)  # setuid binaries cannot hand privileges back
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # the agent dies with its worker, even on kill -9

    return apply


def _own_user_and_network_namespace() -> None:
    """Unprivileged path: a user namespace mapping only our own IDs, owning a fresh network namespace."""
    uid, gid = os.geteuid(), os.getegid()
    _unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
    for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")):
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def _loopback_up() -> None:
    """A new network namespace has ``lo`` down; bring it up so the agent can talk to itself, and only itself."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | _IFF_UP))


def probe(policy: SandboxPolicy) -> str | None:
    """Try the policy's namespaces and identity switch in a throw-away child; the reason it fails, or None.

    Used at worker start to warn early; ``run_agent`` still refuses per run, since availability can change.
    """
    if policy.network == "allowed" and policy.identity is None:
        return None
    with spawning():  # the throw-away child belongs to no run: nobody may claim it as an orphan
        return _probe_in_child(policy)


def _probe_in_child(policy: SandboxPolicy) -> str | None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status only
        code = 0
        try:
            child_setup(policy, lambda: None)()
        except OSError as exc:
            code = exc.errno if exc.errno and exc.errno < 256 else 1
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return None if code == 0 else (os.strerror(code) if code > 1 else "setup failed")


# --- processes of one run


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    sid: int
    state: str
    starttime: int

    @property
    def key(self) -> tuple[int, int]:
        """(pid, start time): a pid alone may be reused by an unrelated process."""
        return (self.pid, self.starttime)


def read_proc(pid: int) -> ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # comm may contain spaces and parentheses
    return ProcInfo(pid, int(fields[1]), int(fields[3]), fields[0], int(fields[19]))


def process_table() -> dict[int, ProcInfo]:
    table: dict[int, ProcInfo] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = read_proc(int(name))
            if info is not None:
                table[info.pid] = info
    return table


def subtree(root: int, table: Mapping[int, ProcInfo]) -> list[ProcInfo]:
    """Descendants of ``root``, parents before children."""
    children: dict[int, list[ProcInfo]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info)
    found, queue = [], list(children.get(root, []))
    while queue:
        info = queue.pop(0)
        found.append(info)
        queue.extend(children.get(info.pid, []))
    return found


def _environ_has(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return marker in b"\0" + handle.read()
    except OSError:
        return False  # gone, or it made itself non-dumpable: the other marks must catch it


_active_lock = threading.Lock()
_active: dict[str, RunTracker] = {}
_spawning = 0  # children forked (or about to be) whose run is not registered yet; guarded by _active_lock


@contextmanager
def spawning() -> Iterator[None]:
    """Hold from before a fork until the child's ``RunTracker`` is registered (or the fork failed).

    Between ``fork`` and the registration the new child is a direct child of this process that no run accounts
    for: exactly what another run's orphan claiming kills. While any spawn is in flight nobody claims orphans
    (they are claimed by a later cleanup instead).
    """
    global _spawning
    with _active_lock:
        _spawning += 1
    try:
        yield
    finally:
        with _active_lock:
            _spawning -= 1


@dataclass
class RunTracker:
    """Every process of one agent run, found by three independent marks, so it can be killed after the run.

    * ancestry: the agent and each process whose parent was already attributed (snapshots taken on every
      watchdog tick, so a fork-then-orphan is caught if it lives across a tick);
    * session: every session an attributed process belonged to (``setsid`` in a child seen by ancestry; a
      process forked while its parent is killed keeps the parent's session);
    * environment: ``AGENT_RUN_ID=<token>`` (random per run) in ``/proc/<pid>/environ``, which survives
      reparenting and ``setsid`` (a process can drop it only by exec'ing with a new environment or by becoming
      non-dumpable, and a same-UID worker cannot read a non-dumpable process's environ).

    A descendant that defeats all three before the first tick is still a child of the (subreaper) worker: in
    an agent host (``protect_worker_process(claim_orphans=True)``) it is killed as an orphan no active run
    accounts for. Only processes in this process's subtree are candidates, so nothing outside is ever signalled.
    """

    root_pid: int
    token: str
    members: dict[tuple[int, int], ProcInfo] = field(default_factory=dict)
    sessions: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._marker = f"{RUN_ID_VAR}={self.token}\0".encode()
        root = read_proc(self.root_pid)
        if root is not None:
            self.members[root.key] = root
            self.sessions.add(root.sid)
        with _active_lock:
            _active[self.token] = self

    def observe(self, table: Mapping[int, ProcInfo] | None = None) -> None:
        """Attribute the current processes of this run (called on each watchdog tick and while killing)."""
        table = process_table() if table is None else table
        with self._lock:
            for info in subtree(os.getpid(), table):
                if info.key in self.members:
                    continue
                parent = table.get(info.ppid)
                by_ancestry = parent is not None and parent.key in self.members
                if by_ancestry or self._in_our_session(info, table):
                    self.members[info.key] = info
                    self.sessions.add(info.sid)
                elif info.state != "Z" and _environ_has(info.pid, self._marker):
                    self.members[info.key] = info

    def _in_our_session(self, info: ProcInfo, table: Mapping[int, ProcInfo]) -> bool:
        """In a session one of our processes had, and still the same session (caller holds ``_lock``).

        A session id is a pid, so once every process of an old session is gone it can be reused: a new leader
        (``sid == pid``) is never attributed by session, and a process whose leader is alive but not ours is
        in a new session that merely has the old number. A gone leader is fine: its id stays allocated while
        any member of its session lives, so the session is still the one we saw.
        """
        if info.sid not in self.sessions or info.sid == info.pid:
            return False
        leader = table.get(info.sid)
        return leader is None or leader.key in self.members

    def owns(self, info: ProcInfo) -> bool:
        with self._lock:
            return info.key in self.members

    def close(self) -> None:
        with _active_lock:
            _active.pop(self.token, None)

    def _targets(self, table: Mapping[int, ProcInfo]) -> list[ProcInfo]:
        with self._lock:
            keys = list(self.members)
        mine = [table[pid] for pid, start in keys if pid in table and table[pid].starttime == start]
        if not _claims_orphans:
            return mine
        with _active_lock:  # after the table was read: every child in it has a registered run or is in flight
            if _spawning:
                return mine
            others = [tracker for tracker in _active.values() if tracker is not self]
        for tracker in others:
            tracker.observe(table)
        me, known = os.getpid(), {info.key for info in mine}
        for info in subtree(me, table):
            if info.ppid == me and info.key not in known and not any(t.owns(info) for t in others):
                mine.append(info)  # an orphan no active run accounts for (its own children follow it here)
        return mine

    def kill_all(self, *, keep_waiting_for: Iterable[int] = ()) -> int:
        """SIGKILL every process of this run and reap the ones reparented here; how many were killed.

        ``keep_waiting_for``: pids a ``Popen`` owns and waits for itself (never reaped here, or its status
        would be stolen).
        """
        spare = set(keep_waiting_for)
        killed: set[tuple[int, int]] = set()
        me = os.getpid()
        deadline = time.monotonic() + REAP_TIMEOUT
        try:
            while True:
                table = process_table()
                self.observe(table)
                targets = [info for info in self._targets(table) if info.pid != me]
                if not targets:
                    return len(killed)
                waited_for = spare | _run_roots()  # each run's Popen reaps its own child
                for info in targets:
                    if info.state != "Z" and _kill(info):
                        killed.add(info.key)
                    if info.ppid == me and info.pid not in waited_for:
                        _reap(info.pid)
                if time.monotonic() > deadline:
                    log.warning("sandbox.survivors", count=len(targets))
                    return len(killed)
                time.sleep(0.01)
        finally:
            self.close()


def sweep_foreign_sessions() -> int:
    """Kill and reap this process's children that are not in its session; how many were killed.

    For the prefork main process, a subreaper whose own children are the pool processes (same session, never
    touched: billiard reaps them). Every agent starts a new session, so a child here in another session is an
    agent process orphaned when its pool process died (crash, time limit, recycling). Its own children are
    reparented here when it dies and go on a later sweep.
    """
    me, own_session = os.getpid(), os.getsid(0)
    killed = 0
    for info in process_table().values():
        if info.ppid != me or info.sid == own_session:
            continue
        if info.state != "Z" and _kill(info):
            killed += 1
        _reap(info.pid)
    return killed


def start_orphan_sweeper(interval: float = 5.0) -> threading.Event:
    """``sweep_foreign_sessions`` every ``interval`` seconds in a daemon thread; set the event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                if killed := sweep_foreign_sessions():
                    log.warning("sandbox.orphans_swept", count=killed)
            except OSError as exc:  # /proc unreadable for a moment: try again next time
                log.warning("sandbox.sweep_failed", error=exc.strerror)

    threading.Thread(target=loop, name="orphan-sweeper", daemon=True).start()
    return stop


def _run_roots() -> set[int]:
    """The agent pids active runs' ``Popen`` objects will wait for themselves."""
    with _active_lock:
        return {tracker.root_pid for tracker in _active.values()}


def _kill(info: ProcInfo) -> bool:
    """SIGKILL ``info`` only if it is still the same process (pidfd: no pid-reuse race)."""
    try:
        fd = os.pidfd_open(info.pid)
    except (OSError, AttributeError):
        return False
    try:
        current = read_proc(info.pid)
        if current is None or current.key != info.key:
            return False
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _reap(pid: int) -> None:
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
