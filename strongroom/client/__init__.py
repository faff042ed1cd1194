"""The strongroom client SDK: signed requests, typed errors, verified downloads. The CLI is built on it.

Names load on first use, so a command that needs only the errors or the identity never imports httpx or pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from strongroom.client.download import DownloadResult, DownloadTicket
    from strongroom.client.errors import ClientError, IdentityError, ProtocolError, WaitTimeout
    from strongroom.client.identity import Identity, create_identity, default_identity_path, load_identity
    from strongroom.client.sdk import AccessLog, OperationPage, OperationSummary, StrongroomClient

_HOMES = {
    "AccessLog": "strongroom.client.sdk",
    "ClientError": "strongroom.client.errors",
    "DownloadResult": "strongroom.client.download",
    "DownloadTicket": "strongroom.client.download",
    "Identity": "strongroom.client.identity",
    "IdentityError": "strongroom.client.errors",
    "OperationPage": "strongroom.client.sdk",
    "OperationSummary": "strongroom.client.sdk",
    "ProtocolError": "strongroom.client.errors",
    "StrongroomClient": "strongroom.client.sdk",
    "WaitTimeout": "strongroom.client.errors",
    "create_identity": "strongroom.client.identity",
    "default_identity_path": "strongroom.client.defaults",
    "load_identity": "strongroom.client.identity",
}

__all__ = [
    "AccessLog",
    "ClientError",
    "DownloadResult",
    "DownloadTicket",
    "Identity",
    "IdentityError",
    "OperationPage",
    "OperationSummary",
    "ProtocolError",
    "StrongroomClient",
    "WaitTimeout",
    "create_identity",
    "default_identity_path",
    "load_identity",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'strongroom.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value
