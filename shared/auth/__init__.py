"""ERC-8128 signed HTTP requests (RFC 9421 + RFC 9530 + EIP-191): signer, verifier, replay and rate state.

Clients call ``sign_request``; servers build a ``SignedRequest`` and ``await Verifier(...).verify(...)``.
The wire format and a worked example are in ``docs/signing.md``. Names load on first use: a client that only
signs never imports the verifier's Redis and settings.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.auth.signer import new_nonce, sign_request
    from shared.auth.verifier import SignedRequest, VerifiedSigner, Verifier, ensure_grantee

_HOMES = {
    "new_nonce": "shared.auth.signer",
    "sign_request": "shared.auth.signer",
    "SignedRequest": "shared.auth.verifier",
    "VerifiedSigner": "shared.auth.verifier",
    "Verifier": "shared.auth.verifier",
    "ensure_grantee": "shared.auth.verifier",
}

__all__ = ["SignedRequest", "VerifiedSigner", "Verifier", "ensure_grantee", "new_nonce", "sign_request"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'shared.auth' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
