"""The strongroom client SDK: signed requests, typed errors, verified downloads. The CLI is built on it."""

from shared.client.download import DownloadResult, DownloadTicket
from shared.client.errors import ClientError, IdentityError, ProtocolError, WaitTimeout
from shared.client.identity import Identity, create_identity, default_identity_path, load_identity
from shared.client.sdk import AccessLog, OperationPage, OperationSummary, StrongroomClient

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
