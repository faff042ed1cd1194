"""ERC-8128 signed HTTP requests (RFC 9421 + RFC 9530 + EIP-191): signer, verifier, replay and rate state.

Clients call ``sign_request``; servers build a ``SignedRequest`` and ``await Verifier(...).verify(...)``.
The wire format and a worked example are in ``docs/signing.md``.
"""

from shared.auth.signer import new_nonce, sign_request
from shared.auth.verifier import SignedRequest, VerifiedSigner, Verifier, ensure_grantee

__all__ = ["SignedRequest", "VerifiedSigner", "Verifier", "ensure_grantee", "new_nonce", "sign_request"]
