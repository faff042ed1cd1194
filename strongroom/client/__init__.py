"""The strongroom client SDK: signed requests, typed errors, verified downloads. The CLI is built on it."""

from strongroom.client.download import DownloadResult, DownloadTicket
from strongroom.client.errors import ClientError, IdentityError, ProtocolError, WaitTimeout
from strongroom.client.identity import Identity, create_identity, default_identity_path, load_identity
from strongroom.client.sdk import AccessLog, OperationPage, OperationSummary, StrongroomClient

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
