"""Turning an API answer into a typed exception with a message a person can act on.

The API answers errors as RFC 9457 ``application/problem+json`` with a stable ``code``. The SDK maps each code to
the matching class of ``shared.errors`` (so callers catch ``NotFound``, ``AuthError``... exactly as server code
does) and prefixes the server's ``detail`` with a hint saying what to do about it. Client-only failures have their
own small classes here:

    StrongroomError
    +-- ClientError             the SDK itself cannot go on (bad identity file, wait timed out, odd response)
    |   +-- IdentityError       the identity file is missing, unreadable, too open, or already exists
    |   +-- WaitTimeout         an operation did not reach a terminal status in time
    |   +-- ProtocolError       the API answered something the contract does not allow
    +-- Unavailable             also raised when the API cannot be reached at all (code ``api_unreachable``)

Messages never include signatures, keys or artifact bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from shared.errors import (
    AuthError,
    Conflict,
    CryptoError,
    Expired,
    IntegrityError,
    NotFound,
    NotGrantee,
    RateLimited,
    StorageError,
    StrongroomError,
    Unavailable,
    ValidationFailed,
)

PROBLEM_JSON = "application/problem+json"


class ClientError(StrongroomError):
    code = "client_error"
    title = "Client error"


class IdentityError(ClientError):
    code = "identity_invalid"
    title = "Identity problem"


class WaitTimeout(ClientError):
    code = "wait_timeout"
    title = "Timed out waiting for the operation"


class ProtocolError(ClientError):
    code = "bad_response"
    title = "Unexpected API response"


# What to do about each stable code; the server's own detail follows in parentheses.
HINTS: Mapping[str, str] = {
    "signature_missing": "the request was not signed",
    "signature_malformed": "the request signature is malformed (client and server versions may differ)",
    "signature_expired": "the signature is outside its validity window: check your clock",
    "signature_invalid": "the signature does not match this request (a proxy may rewrite the URL)",
    "digest_mismatch": "the body changed after signing (a proxy may rewrite it)",
    "nonce_replayed": "this request was already seen (replayed nonce): send it again with a fresh signature",
    "chain_not_allowed": "this server does not accept signatures for that chain id",
    "contract_wallet_unsupported": "smart-contract wallets are not enabled on this server",
    "authority_not_allowed": "the signed host is not one this server answers for: check --api",
    "not_grantee": "your identity is not the grantee of this operation",
    "not_found": "no such operation or artifact",
    "operation_not_found": "no such operation (check the id)",
    "artifact_not_found": "no such artifact in this operation (deleted, or a typo in the name?)",
    "expired": "the operation has passed its retention period and its artifacts are gone",
    "conflict": "the operation is already finished",
    "operation_finished": "the operation is already finished; nothing to cancel",
    "rate_limited": "too many requests: slow down and retry later",
    "unavailable": "the service is temporarily unavailable: retry later",
    "redis_unavailable": "the service's Redis is unavailable: retry later",
    "queue_unavailable": "the work queue is unavailable, the operation was not started: retry later",
    "nonce_store_unavailable": "the server cannot check signatures right now: retry later",
    "audit_unavailable": "the audit log is unavailable, so access is refused for now: retry later",
    "rpc_unavailable": "the Ethereum RPC endpoint for contract wallets is unavailable: retry later",
    "api_unreachable": "cannot reach the strongroom API: is it running, and is --api right?",
    "storage_error": "the storage backend answered with an error: retry later",
    "agent_unknown": "no agent by that name on this server",
    "agent_invalid": "agent names are lowercase letters, digits and '-'",
    "input_too_large": "the input is larger than the server accepts",
    "retention_days_invalid": "retention_days is out of the range this server allows",
    "body_too_large": "the request is larger than the server accepts (input files too big?)",
    "body_invalid": "the server refused the request body",
    "input_invalid": "the operation input was refused",
    "status_invalid": "unknown status filter (pending, running, succeeded, failed, cancelled)",
    "limit_invalid": "the page size is out of range",
    "cursor_invalid": "the page cursor is not valid (start the listing again)",
    "encryption_public_key_invalid": "the identity's public encryption key was refused",
    "range_not_satisfiable": "the byte range lies outside the artifact",
    "integrity_error": "integrity check failed: the downloaded artifact was modified or corrupted; nothing written",
    "crypto_error": "the artifact could not be decrypted with this identity",
}

_BY_CODE: Mapping[str, type[StrongroomError]] = {
    "not_grantee": NotGrantee,
    "expired": Expired,
    "rate_limited": RateLimited,
    "integrity_error": IntegrityError,
    "crypto_error": CryptoError,
    "api_unreachable": Unavailable,
}

_BY_STATUS: Mapping[int, type[StrongroomError]] = {
    400: ValidationFailed,
    401: AuthError,
    403: NotGrantee,
    404: NotFound,
    409: Conflict,
    413: ValidationFailed,
    416: ValidationFailed,
    422: ValidationFailed,
    429: RateLimited,
    502: StorageError,
    503: Unavailable,
    504: Unavailable,
}


# Codes whose server detail is already one complete sentence saying more than the hint (the agent asked for and
# the ones available; the allowed range): the detail alone, so the message does not say the same thing twice.
DETAIL_SUFFICES = frozenset({"agent_unknown", "retention_days_invalid"})


def message_for(code: str, detail: str = "") -> str:
    """The hint for ``code`` followed by the server's detail, or the detail alone for a code we do not know."""
    hint = HINTS.get(code)
    if detail and code in DETAIL_SUFFICES:
        return detail
    if hint and detail and not _repeats(hint, detail):
        return f"{hint} ({detail})"
    return hint or detail or code


def _repeats(hint: str, detail: str) -> bool:
    """True when the detail says little the hint does not (most of its words are already there)."""
    hint_words = set(re.findall(r"\w+", hint.lower()))
    detail_words = re.findall(r"\w+", detail.lower())
    return sum(w in hint_words for w in detail_words) >= 0.75 * len(detail_words)


def parse_retry_after(value: str | None, default: int = 1) -> int:
    """``Retry-After`` as whole seconds; only the delta-seconds form is used by strongroom."""
    try:
        return max(0, int(float(value))) if value is not None else default
    except ValueError:
        return default


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> StrongroomError:
    """Build the typed exception for a non-2xx answer (problem+json or not)."""
    problem = _problem(body)
    code = str(problem.get("code") or "") or _default_code(status)
    detail = str(problem.get("detail") or problem.get("title") or "")
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or (Unavailable if status >= 500 else StrongroomError)
    message = message_for(code, detail) or f"HTTP {status}"
    error: StrongroomError
    if cls is RateLimited or issubclass(cls, RateLimited):
        error = RateLimited(message, retry_after=parse_retry_after(headers.get("retry-after")))
    else:
        error = cls(message)
    error.code = code
    error.status = status
    return error


def unreachable(api_url: str, reason: str) -> Unavailable:
    error = Unavailable(message_for("api_unreachable", f"{api_url}: {reason}"))
    error.code = "api_unreachable"
    return error


def _problem(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _default_code(status: int) -> str:
    cls = _BY_STATUS.get(status)
    return cls.code if cls else ("unavailable" if status >= 500 else "http_error")
