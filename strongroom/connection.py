"""The connection settings a running `strongroom dev` chose, so the admin commands can reach the same stack.

``strongroom dev`` picks its Redis port, a random S3 port, generated S3 credentials and a generated keyring. Once
they run it writes ``<data dir>/connection.json`` (mode 0600): the Redis URL, the S3 endpoint, bucket and region,
the keyring file and a *reference* to the S3 credentials file (never the secret itself), plus dev's pid. The admin
commands (``strongroom audit verify``, ``strongroom keys ...``, ``strongroom keyring rotate``) read it:

- with ``--data-dir DIR``: that dev's file (refused if a connection variable is also set: one stack or the other);
- without it, when no connection variable (``REDIS_URL``, ``STRONGROOM_S3_ENDPOINT_URL``, ``STRONGROOM_KEYRING``,
  ``STRONGROOM_KEYRING_FILE``) is set: the ``.strongroom`` folder of the current directory or of the nearest
  parent that has one (the repository, for ``make dev``). A shell configured for a real deployment is never
  mixed with a dev stack's values; the stack's S3 credentials replace any ``AWS_*`` keys of the shell, so real
  keys are never sent to dev's endpoint.

The file steers where the admin commands connect, so it is trusted only as dev leaves it (a file in a cloned
repository or in a shared parent such as ``/tmp`` is not): it must be the user's own and mode 0600, only the
variables dev writes are read from it, and the credentials and keyring files it names must lie in its folder.
Dev holds an exclusive ``flock`` on it while it runs and deletes it when it stops: a running stack is one whose
file is locked (a pid can be reused or forged; a lock dies with its holder).

This module imports nothing heavy: the admin commands load it before any server code. They load it in production
too (where a configured environment passes through ``admin_environ`` unchanged), so it lives outside
``strongroom.dev``, as ``strongroom.files`` does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.errors import ConfigError
from strongroom.files import write_private

FILE_NAME = "connection.json"
DEFAULT_DATA_DIR = ".strongroom"
# Written to the file when dev's environment has them (the keyring and the S3 secret stay in their own files; a
# password inside an external REDIS_URL given to dev is kept as given, which is why the file is 0600).
KEPT = (
    "STRONGROOM_ENV",
    "REDIS_URL",
    "STRONGROOM_S3_ENDPOINT_URL",
    "STRONGROOM_S3_BUCKET",
    "STRONGROOM_S3_ADDRESSING_STYLE",
    "STRONGROOM_S3_CORS_ORIGINS",  # so a `strongroom init` with these settings keeps dev's bucket CORS rule
    "AWS_REGION",
    "STRONGROOM_KEYRING_FILE",
    "STRONGROOM_WORK_DIR",
)
# Any of these in the environment means "this shell is configured already": no implicit discovery then.
CONNECTION_VARIABLES = (
    "REDIS_URL",
    "STRONGROOM_REDIS_URL",
    "STRONGROOM_S3_ENDPOINT_URL",
    "STRONGROOM_KEYRING",
    "STRONGROOM_KEYRING_FILE",
)


class Published:
    """``connection.json`` while dev runs: the exclusive lock that says so is held until ``close``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ConfigError("--data-dir", f"{path.parent}: another strongroom dev is using it") from None

    def close(self) -> None:
        """Dev stopped: the file goes (a stale file must not send admin commands to whatever reuses its ports)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


def write(data_dir: Path, env: Mapping[str, str], *, api_url: str, credentials_file: Path | None) -> Published:
    """Record what this dev run chose (called once its servers run) and hold it as running until closed."""
    document: dict[str, Any] = {
        "pid": os.getpid(),
        "api_url": api_url,
        "env": {name: env[name] for name in KEPT if env.get(name)},
        "s3_credentials_file": str(credentials_file) if credentials_file else None,
    }
    path = data_dir / FILE_NAME
    write_private(path, json.dumps(document, indent=2, sort_keys=True) + "\n", overwrite=True)
    return Published(path)


def find(start: Path) -> Path | None:
    """The data dir of the nearest ``.strongroom/connection.json`` at or above ``start``, or None."""
    for folder in (start, *start.parents):
        candidate = folder / DEFAULT_DATA_DIR
        if (candidate / FILE_NAME).is_file():
            return candidate
    return None


def _running(path: Path) -> bool:
    """Whether a dev holds the file's lock (a shared lock we can take means nobody does)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _refuse(data_dir: Path, why: str) -> ConfigError:
    return ConfigError("--data-dir", f"{data_dir / FILE_NAME} {why}: ignored")


def _inside(data_dir: Path, value: str, what: str) -> Path:
    path = Path(value).resolve()
    if not path.is_relative_to(data_dir.resolve()):
        raise _refuse(data_dir, f"names a {what} outside its folder ({value})")
    return path


def load(data_dir: Path, *, require_running: bool = True) -> dict[str, str]:
    """The environment variables a dev run in ``data_dir`` recorded, with its S3 credentials read back in.

    ``require_running``: refuse (one clear line) when that dev has stopped, since its servers are gone with it.
    """
    path = data_dir / FILE_NAME
    try:
        info = path.stat()
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("--data-dir", f"{data_dir}: no {FILE_NAME} (not the data dir of `strongroom dev`?)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError("--data-dir", f"{path} cannot be read ({exc})") from None
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise _refuse(data_dir, "is not yours or not mode 0600 (strongroom dev writes it so)")
    env = document.get("env") if isinstance(document, dict) else None
    if not isinstance(env, dict):
        raise _refuse(data_dir, "is not a strongroom dev connection file")
    if require_running and not _running(path):
        raise ConfigError(
            "strongroom dev",
            f"is not running on {data_dir}: start it (`strongroom dev --data-dir {data_dir}`), "
            "or set REDIS_URL and the S3 and keyring variables",
        )
    values = {name: str(env[name]) for name in KEPT if isinstance(env.get(name), str | int)}
    if "STRONGROOM_KEYRING_FILE" in values:
        _inside(data_dir, values["STRONGROOM_KEYRING_FILE"], "keyring file")
    credentials = document.get("s3_credentials_file")
    if credentials:
        try:
            secret = json.loads(_inside(data_dir, str(credentials), "credentials file").read_text())
            values["AWS_ACCESS_KEY_ID"] = str(secret["access_key"])
            values["AWS_SECRET_ACCESS_KEY"] = str(secret["secret_key"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError("--data-dir", f"{data_dir}: its S3 credentials file cannot be read") from None
    return values


def admin_environ(
    data_dir: str | None, environ: Mapping[str, str], cwd: Path, *, require_running: bool = True
) -> dict[str, str]:
    """The environment an admin command runs with: ``environ`` completed from a dev stack's file when one applies.

    The stack's own values win over the shell's (its endpoint with its credentials, never the shell's AWS keys);
    a shell with a connection variable is used as it is, and with ``--data-dir`` it is refused (see the module
    docstring).
    """
    configured = [name for name in CONNECTION_VARIABLES if environ.get(name)]
    if data_dir is not None:
        if configured:
            raise ConfigError(
                "--data-dir", f"cannot be combined with {', '.join(configured)}: use one stack or the other"
            )
        folder = Path(data_dir).expanduser().resolve()
    elif configured:
        return dict(environ)
    else:
        found = find(cwd.resolve())
        if found is None:
            return dict(environ)
        folder = found
    return {**{k: v for k, v in environ.items() if v}, **load(folder, require_running=require_running)}
