"""The exception tree. The API maps it to RFC 9457 problem+json in one place (``api_service/errors.py``).

    StrongroomError                 code, status, title; ``detail`` is safe to show to a client
    +-- ConfigError                 a bad environment variable; stops the process at start-up
    +-- ValidationFailed (422)      bad request input; ``code`` names the field (``agent_unknown``...)
    |   +-- JsonTooDeep (422)       JSON nested deeper than ``shared.bounded_json.MAX_JSON_DEPTH`` (also a ValueError)
    +-- AuthError (401)             signature_missing, signature_malformed, signature_expired,
    |   |                           signature_invalid, digest_mismatch, nonce_replayed, chain_not_allowed,
    |   |                           contract_wallet_unsupported
    |   +-- NotGrantee (403)        a valid signature, but not the operation's grantee
    |       +-- GrantDenied (403)   no_grant, agent_not_granted, grant_expired, grant_revoked (shared.grants)
    +-- RateLimited (429)           carries ``retry_after`` seconds (or None: waiting alone will not help)
    |   +-- QuotaExceeded (429)     a grant's quota; ``quota`` names it (shared.quotas)
    +-- NotFound (404)              unknown operation or artifact
    |   +-- Expired (404)           past ``expires_at``: ``code`` is ``expired``
    +-- Conflict (409)              e.g. cancelling a finished operation
    +-- Unavailable (503)           a dependency (Redis, S3, RPC) is down: fail closed
    +-- StorageError (502)          S3 answered with an unexpected error
    +-- CryptoError                 decryption, integrity or key-wrap failures (never carry key material)
        +-- IntegrityError          a checksum or authentication tag did not match
        +-- KeyringError            missing key id, no primary, a key still in use

Messages never contain keys, signatures or plaintext: they are shown to clients and written to logs.
"""

from __future__ import annotations


class StrongroomError(Exception):
    status: int = 500
    code: str = "internal_error"
    title: str = "Internal error"

    def __init__(self, detail: str = "", *, code: str | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if code is not None:
            self.code = code


CONFIG_EXIT = 2  # the exit status of a process (``strongroom``, the worker) stopped by a ConfigError at start


class ConfigError(StrongroomError):
    code = "config_invalid"
    title = "Invalid configuration"

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable} {problem}")
        self.variable = variable


class ValidationFailed(StrongroomError):
    status = 422
    code = "validation_failed"
    title = "Invalid request"


class JsonTooDeep(ValidationFailed, ValueError):
    """Untrusted JSON nested deeper than we parse (``json_too_deep``). A ``ValueError`` too, so code that already
    treats malformed JSON as ``ValueError`` (``json.JSONDecodeError`` is one) refuses it the same way."""

    code = "json_too_deep"
    title = "JSON nested too deeply"


class AuthError(StrongroomError):
    status = 401
    code = "signature_invalid"
    title = "Signature not accepted"


class NotGrantee(AuthError):
    status = 403
    code = "not_grantee"
    title = "Forbidden"


class RateLimited(StrongroomError):
    status = 429
    code = "rate_limited"
    title = "Too many requests"

    def __init__(self, detail: str = "", *, retry_after: int | None = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class GrantDenied(NotGrantee):
    """The signer is proven, but no grant lets them do this; ``code`` names the rule."""

    title = "No grant"


class QuotaExceeded(RateLimited):
    """A grant's quota would be crossed; ``quota`` names it. ``retry_after`` only where time alone helps."""

    code = "quota_exceeded"
    title = "Quota exceeded"

    def __init__(self, quota: str, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.quota = quota


class NotFound(StrongroomError):
    status = 404
    code = "not_found"
    title = "Not found"


class Expired(NotFound):
    code = "expired"
    title = "Expired"


class Conflict(StrongroomError):
    status = 409
    code = "conflict"
    title = "Conflict"


class Unavailable(StrongroomError):
    status = 503
    code = "unavailable"
    title = "Service unavailable"


class WorkerDiskFull(Unavailable):
    """The worker's own disk filled up (ENOSPC/EDQUOT) while it prepared or sealed a run: worth a retry, since
    another worker (or this one, once the run directory is gone) may have room."""

    code = "worker_disk_full"
    title = "Worker disk full"


class StorageError(StrongroomError):
    status = 502
    code = "storage_error"
    title = "Storage error"


class CryptoError(StrongroomError):
    status = 422
    code = "crypto_error"
    title = "Cryptographic failure"


class IntegrityError(CryptoError):
    code = "integrity_error"
    title = "Integrity check failed"


class KeyringError(CryptoError):
    status = 500
    code = "keyring_error"
    title = "Keyring error"
