"""Where the client looks by default: the API URL and the identity file (no imports beyond the standard library,
so the command line can show them in ``--help`` without loading the SDK)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DEFAULT_API_URL = "http://127.0.0.1:8080"
API_URL_ENV = "STRONGROOM_API_URL"
IDENTITY_ENV = "STRONGROOM_IDENTITY"


def default_identity_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(IDENTITY_ENV):
        return Path(env[IDENTITY_ENV]).expanduser()
    return Path("~/.config/strongroom/identity.json").expanduser()
