"""Client side of ERC-8128 signed requests: the headers the SDK, the CLI and the tests attach to a request.

The signer and the verifier build the signature base with the same code (``shared.auth.base``), so the only
thing a client has to get right is the URL it actually sends.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from shared.auth.base import (
    REQUIRED_COMPONENTS,
    AuthorityError,
    RequestParts,
    content_digest,
    normalize_authority,
    serialize_params,
    signature_base,
)
from shared.auth.headers import PREFERRED_LABEL
from shared.auth.keys import SigningKey
from shared.errors import ValidationFailed

NONCE_BYTES = 16
_LABEL_RE = re.compile(r"^[a-z*][a-z0-9_.*-]{0,63}$")  # an RFC 9651 dictionary key


class MessageSigner(Protocol):
    """What ``eth_account.LocalAccount`` offers (and any hardware/remote signer can): an address and EIP-191."""

    address: str

    def sign_message(self, signable_message: Any) -> Any: ...


def new_nonce() -> str:
    """128 random bits, base64url without padding (22 characters)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(NONCE_BYTES)).rstrip(b"=").decode("ascii")


def sign_request(
    signer: str | bytes | MessageSigner,
    method: str,
    url: str,
    body: bytes = b"",
    *,
    chain_id: int = 1,
    created: int | None = None,
    ttl: int = 60,
    nonce: str | None = None,
    label: str = PREFERRED_LABEL,
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Return ``Content-Digest``, ``Signature-Input`` and ``Signature`` for one request, to add to its headers.

    ``url`` must be the URL the request goes to: ``@authority`` is its lowercase host (with the port only when it
    is not the scheme's default) and ``@path``/``@query`` are its raw, percent-encoded path and query. ``headers``
    are accepted for API symmetry with other signers; the profile covers none of them.
    """
    account = SigningKey.from_key(signer) if isinstance(signer, str | bytes) else signer
    target = urlsplit(url)
    if target.scheme not in ("http", "https") or not target.netloc:
        raise ValidationFailed("url must be an absolute http(s) URL", code="url_invalid")
    if not _LABEL_RE.fullmatch(label):
        raise ValidationFailed("label must be a structured-field key such as 'eth'", code="label_invalid")
    if ttl <= 0:
        raise ValidationFailed("ttl must be positive", code="ttl_invalid")
    try:
        authority = normalize_authority(target.netloc.rpartition("@")[2], target.scheme)
    except AuthorityError:
        raise ValidationFailed("url has an invalid port", code="url_invalid") from None
    created = int(time.time()) if created is None else created
    digest = content_digest(body)
    params: dict[str, object] = {
        "created": created,
        "expires": created + ttl,
        "nonce": nonce or new_nonce(),
        "keyid": f"erc8128:{chain_id}:{account.address.lower()}",
    }
    parts = RequestParts(
        method=method.upper(),
        authority=authority,
        path=target.path or "/",
        query=f"?{target.query}",
        headers={**{k.lower(): v for k, v in (headers or {}).items()}, "content-digest": digest},
    )
    base = signature_base(REQUIRED_COMPONENTS, params, parts)
    signature = _sign(account, base)

    return {
        "Content-Digest": digest,
        "Signature-Input": f"{label}={serialize_params(REQUIRED_COMPONENTS, params)}",
        "Signature": f"{label}=:{base64.b64encode(signature).decode('ascii')}:",
    }


def _sign(signer: SigningKey | MessageSigner, text: str) -> bytes:
    if isinstance(signer, SigningKey):
        return signer.sign_text(text)
    # Another signer (an eth_account LocalAccount, a hardware or remote wallet) takes eth_account's message type.
    from eth_account.messages import encode_defunct

    return bytes(signer.sign_message(encode_defunct(text=text)).signature)
