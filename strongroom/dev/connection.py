"""The connection settings a running `strongroom dev` chose, so the admin commands can reach the same stack.

``strongroom dev`` picks its Redis port, a random S3 port, generated S3 credentials and a generated keyring. Once
they run it writes ``<data dir>/connection.json`` (mode 0600): the Redis URL, the S3 endpoint, bucket and region,
the keyring file and a *reference* to the S3 credentials file (never the secret itself), plus dev's pid. The admin
commands (``strongroom audit verify``, ``strongroom keys ...``, ``strongroom keyring rotate``) read it:

- with ``--data-dir DIR``: that dev's file, each variable already set in the environment winning over it;
- without it, when no connection variable (``REDIS_URL``, ``STRONGROOM_S3_ENDPOINT_URL``, ``STRONGROOM_KEYRING``,
  ``STRONGROOM_KEYRING_FILE``) is set: the ``.strongroom`` folder of the current directory or of the nearest
  parent that has one (the repository, for ``make dev``). A shell configured for a real deployment is never
  mixed with a dev stack's values.

This module imports nothing heavy: the admin commands load it before any server code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.errors import ConfigError
from strongroom.files import write_private

FILE_NAME = "connection.json"
DEFAULT_DATA_DIR = ".strongroom"
# Written to the file when dev's environment has them (never a secret: the keyring and the S3 secret are files).
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


def write(data_dir: Path, env: Mapping[str, str], *, api_url: str, credentials_file: Path | None) -> Path:
    """Record what this dev run chose (called once its servers run); returns the file's path."""
    document: dict[str, Any] = {
        "pid": os.getpid(),
        "api_url": api_url,
        "env": {name: env[name] for name in KEPT if env.get(name)},
        "s3_credentials_file": str(credentials_file) if credentials_file else None,
    }
    path = data_dir / FILE_NAME
    write_private(path, json.dumps(document, indent=2, sort_keys=True) + "\n", overwrite=True)
    return path


def find(start: Path) -> Path | None:
    """The data dir of the nearest ``.strongroom/connection.json`` at or above ``start``, or None."""
    for folder in (start, *start.parents):
        candidate = folder / DEFAULT_DATA_DIR
        if (candidate / FILE_NAME).is_file():
            return candidate
    return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def load(data_dir: Path, *, require_running: bool = True) -> dict[str, str]:
    """The environment variables a dev run in ``data_dir`` recorded, with its S3 credentials read back in.

    ``require_running``: refuse (one clear line) when that dev has stopped, since its servers are gone with it.
    """
    path = data_dir / FILE_NAME
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("--data-dir", f"{data_dir}: no {FILE_NAME} (not the data dir of `strongroom dev`?)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError("--data-dir", f"{path} cannot be read ({exc})") from None
    pid = document.get("pid")
    if require_running and not (isinstance(pid, int) and _running(pid)):
        raise ConfigError(
            "strongroom dev",
            f"is not running on {data_dir}: start it (`strongroom dev --data-dir {data_dir}`), "
            "or set REDIS_URL and the S3 and keyring variables",
        )
    values = {str(k): str(v) for k, v in (document.get("env") or {}).items()}
    credentials = document.get("s3_credentials_file")
    if credentials:
        try:
            secret = json.loads(Path(credentials).read_text())
            values["AWS_ACCESS_KEY_ID"] = str(secret["access_key"])
            values["AWS_SECRET_ACCESS_KEY"] = str(secret["secret_key"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError("--data-dir", f"{data_dir}: its S3 credentials file cannot be read") from None
    return values


def admin_environ(
    data_dir: str | None, environ: Mapping[str, str], cwd: Path, *, require_running: bool = True
) -> dict[str, str]:
    """The environment an admin command runs with: ``environ`` completed from a dev stack's file when one applies.

    Explicit variables always win; without ``--data-dir`` a dev file is used only by a shell that has no
    connection variable at all (see the module docstring).
    """
    if data_dir is not None:
        folder = Path(data_dir).expanduser().resolve()
    elif any(environ.get(name) for name in CONNECTION_VARIABLES):
        return dict(environ)
    else:
        found = find(cwd.resolve())
        if found is None:
            return dict(environ)
        folder = found
    return {**load(folder, require_running=require_running), **{k: v for k, v in environ.items() if v}}
