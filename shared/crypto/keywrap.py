"""Data-key wraps for the grantee: MetaMask's ``x25519-xsalsa20-poly1305`` JSON (eth-sig-util ``encrypt``).

Why this format: a grantee holding only a MetaMask wallet can open it (``eth_decrypt``), and the SDK/CLI can
implement it with any NaCl library. The wrap is::

    {"version": "x25519-xsalsa20-poly1305", "nonce": b64(24 bytes), "ephemPublicKey": b64(32 bytes),
     "ciphertext": b64(crypto_box(plaintext, nonce, grantee public key, ephemeral secret key))}

and for strongroom its plaintext is the UTF-8 JSON (compact, in this key order)::

    {"v":1,"alg":"cobblestone-256","op":"<operation id>","name":"<artifact name>","dk":"<b64 data key>",
     "sha256":"<hex SHA-256 of the artifact plaintext>"}

``op`` and ``name`` let the unwrapper refuse a wrap copied onto another artifact; ``sha256`` lets it verify the
decrypted artifact. Public keys of small order (all-zero shared secrets) or in non-canonical encodings are
refused: honest clients never produce them.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions
import nacl.utils
from nacl.public import Box, PrivateKey, PublicKey

from shared.errors import CryptoError, IntegrityError, ValidationFailed

__all__ = [
    "WRAP_VERSION",
    "UnwrappedKey",
    "decrypt_with",
    "encrypt_for",
    "generate_encryption_keypair",
    "parse_public_key",
    "public_key_from_secret",
    "unwrap_data_key",
    "wrap_data_key",
    "x25519",
]

WRAP_VERSION = "x25519-xsalsa20-poly1305"
WRAP_FIELDS = frozenset({"version", "nonce", "ephemPublicKey", "ciphertext"})
PAYLOAD_ALG = "cobblestone-256"
KEY_SIZE = 32
NONCE_SIZE = 24
_P25519 = 2**255 - 19
_PROBE_SCALAR = bytes([8] + [0] * 30 + [64])  # clamped: any small-order point maps to zero under it
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_PUBLIC_KEY_INVALID = "encryption_public_key_invalid"


@dataclass(frozen=True)
class UnwrappedKey:
    """An opened wrap. ``data_key`` stays out of reprs (and therefore out of logs and tracebacks)."""

    data_key: bytes = field(repr=False)
    sha256: str

    def check_plaintext_sha256(self, actual_hex: str) -> None:
        """Raise IntegrityError unless the decrypted artifact hashes to the value sealed in the wrap."""
        if not hmac.compare_digest(actual_hex.lower().encode(), self.sha256.encode()):
            raise IntegrityError("decrypted artifact does not match the SHA-256 sealed in its key wrap")


def _b64decode(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def x25519(secret: bytes, public: bytes) -> bytes:
    """RFC 7748 X25519; IntegrityError for small-order points (libsodium refuses an all-zero shared secret)."""
    try:
        return nacl.bindings.crypto_scalarmult(secret, public)
    except (RuntimeError, nacl.exceptions.CryptoError):
        raise IntegrityError("X25519 public key has small order") from None


def _is_canonical(public: bytes) -> bool:
    return int.from_bytes(public, "little") < _P25519


def parse_public_key(b64: str) -> bytes:
    """Decode and vet a grantee's X25519 public key (base64 of 32 bytes, canonical, not of small order)."""
    raw = _b64decode(b64)
    if raw is None or len(raw) != KEY_SIZE:
        raise ValidationFailed("encryption public key must be base64 of 32 bytes", code=_PUBLIC_KEY_INVALID)
    if not _is_canonical(raw):
        raise ValidationFailed("encryption public key is not canonically encoded", code=_PUBLIC_KEY_INVALID)
    try:
        x25519(_PROBE_SCALAR, raw)
    except IntegrityError:
        raise ValidationFailed("encryption public key is a small-order point", code=_PUBLIC_KEY_INVALID) from None
    return raw


def generate_encryption_keypair() -> tuple[bytes, str]:
    """A fresh (32-byte secret, base64 public key) pair, as `strongroom client keygen` stores it."""
    secret = PrivateKey.generate()
    return bytes(secret), _b64(bytes(secret.public_key))


def public_key_from_secret(secret: bytes) -> str:
    """The base64 public key of a secret; equals MetaMask's eth_getEncryptionPublicKey for the same bytes."""
    if len(secret) != KEY_SIZE:
        raise CryptoError("X25519 secrets are 32 bytes")
    return _b64(bytes(PrivateKey(secret).public_key))


def encrypt_for(public_key_b64: str, plaintext: bytes) -> dict[str, str]:
    """eth-sig-util ``encrypt``: crypto_box from a fresh ephemeral key to the recipient's public key."""
    recipient = PublicKey(parse_public_key(public_key_b64))
    ephemeral = PrivateKey.generate()
    nonce = nacl.utils.random(NONCE_SIZE)
    sealed = Box(ephemeral, recipient).encrypt(plaintext, nonce).ciphertext
    return {
        "version": WRAP_VERSION,
        "nonce": _b64(nonce),
        "ephemPublicKey": _b64(bytes(ephemeral.public_key)),
        "ciphertext": _b64(sealed),
    }


def decrypt_with(secret: bytes, wrapped: Mapping[str, object]) -> bytes:
    """eth-sig-util ``decrypt``; IntegrityError for malformed wraps, foreign recipients and any tampering."""
    if len(secret) != KEY_SIZE:
        raise CryptoError("X25519 secrets are 32 bytes")
    if not isinstance(wrapped, Mapping) or set(wrapped) != WRAP_FIELDS:
        raise IntegrityError(f"key wrap must have exactly the fields {sorted(WRAP_FIELDS)}")
    if wrapped["version"] != WRAP_VERSION:
        raise IntegrityError(f"unsupported key wrap version (expected {WRAP_VERSION})")
    nonce, ephemeral, sealed = (_b64decode(wrapped[k]) for k in ("nonce", "ephemPublicKey", "ciphertext"))
    if nonce is None or len(nonce) != NONCE_SIZE:
        raise IntegrityError("key wrap nonce must be base64 of 24 bytes")
    if ephemeral is None or len(ephemeral) != KEY_SIZE or not _is_canonical(ephemeral):
        raise IntegrityError("key wrap ephemeral public key must be base64 of a canonical 32-byte key")
    if sealed is None:
        raise IntegrityError("key wrap ciphertext is not base64")
    try:
        return Box(PrivateKey(secret), PublicKey(ephemeral)).decrypt(sealed, nonce)
    except (RuntimeError, nacl.exceptions.CryptoError):
        raise IntegrityError("key wrap failed to open: not addressed to this key, or modified") from None


def _payload(operation_id: str, name: str, data_key: bytes, sha256_hex: str) -> bytes:
    doc = {"v": 1, "alg": PAYLOAD_ALG, "op": operation_id, "name": name, "dk": _b64(data_key), "sha256": sha256_hex}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def wrap_data_key(
    public_key_b64: str, operation_id: str, name: str, data_key: bytes, plaintext_sha256_hex: str
) -> dict[str, str]:
    """Wrap an artifact's data key (and its plaintext SHA-256) for the grantee's public key."""
    if len(data_key) != KEY_SIZE:
        raise CryptoError("data keys are 32 bytes")
    sha256_hex = plaintext_sha256_hex.lower()
    if not _SHA256_HEX.fullmatch(sha256_hex):
        raise CryptoError("plaintext SHA-256 must be 64 hex digits")
    return encrypt_for(public_key_b64, _payload(operation_id, name, data_key, sha256_hex))


def unwrap_data_key(secret: bytes, wrapped: Mapping[str, object], operation_id: str, name: str) -> UnwrappedKey:
    """Open a wrap and check it was made for this operation and artifact name."""
    plaintext = decrypt_with(secret, wrapped)
    try:
        doc = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError("key wrap payload is not JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != 1 or doc.get("alg") != PAYLOAD_ALG:
        raise IntegrityError(f"key wrap payload is not a v1 {PAYLOAD_ALG} key")
    if doc.get("op") != operation_id or doc.get("name") != name:
        raise IntegrityError("key wrap belongs to another artifact (operation id or name differs): refusing to use it")
    data_key = _b64decode(doc.get("dk"))
    sha256_hex = doc.get("sha256")
    if data_key is None or len(data_key) != KEY_SIZE:
        raise IntegrityError("key wrap payload has a malformed data key")
    if not isinstance(sha256_hex, str) or not _SHA256_HEX.fullmatch(sha256_hex):
        raise IntegrityError("key wrap payload has a malformed sha256")
    return UnwrappedKey(data_key, sha256_hex)
