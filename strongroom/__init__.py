"""strongroom: keeps the files AI agents produce safe, small to serve and easy to fetch.

This is the package users import: ``from strongroom import Client, Identity`` gives the SDK; the ``strongroom``
command lives in ``strongroom.cli`` and the embedded development stack in ``strongroom.dev``. Names are loaded on
first use, so ``import strongroom`` (and the command's start-up) pays only for what is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from strongroom.client import (
        AccessLog,
        ClientError,
        DownloadResult,
        Identity,
        IdentityError,
        ProtocolError,
        WaitTimeout,
        create_identity,
        load_identity,
    )
    from strongroom.client import StrongroomClient as Client

_EXPORTS = {
    "Client": "StrongroomClient",
    "AccessLog": "AccessLog",
    "ClientError": "ClientError",
    "DownloadResult": "DownloadResult",
    "Identity": "Identity",
    "IdentityError": "IdentityError",
    "ProtocolError": "ProtocolError",
    "WaitTimeout": "WaitTimeout",
    "create_identity": "create_identity",
    "load_identity": "load_identity",
}

__all__ = [
    "AccessLog",
    "Client",
    "ClientError",
    "DownloadResult",
    "Identity",
    "IdentityError",
    "ProtocolError",
    "WaitTimeout",
    "create_identity",
    "load_identity",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'strongroom' has no attribute {name!r}")
    value = getattr(importlib.import_module("strongroom.client"), _EXPORTS[name])
    globals()[name] = value  # later lookups skip this function
    return value
