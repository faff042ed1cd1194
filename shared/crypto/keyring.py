"""The server keyring: versioned AES-256-GCM keys that encrypt what strongroom stores about an operation.

The model is Tink's keyset: several keys, each with an id; one primary encrypts new blobs, the others only
decrypt. Every blob names the key id it was sealed with, so rotation is "add a new primary, re-encrypt blobs
whose ``key_id_of`` is not the primary, then drop the old key" (the worker does the re-encryption).

Blob format (version 1), all integers big-endian::

    magic    4 bytes   b"SRKR"
    version  1 byte    0x01
    id_len   1 byte    1..64
    key_id   id_len bytes of ASCII [A-Za-z0-9._-]
    nonce    12 bytes  random per blob
    sealed   AES-256-GCM(key, nonce, plaintext, aad = header || caller_aad), tag (16 bytes) appended

``header`` is everything before the nonce; it is self-delimiting, so ``header || caller_aad`` is unambiguous
and a blob cannot be relabelled with another key id or version without failing authentication.

Keyring document (``STRONGROOM_KEYRING`` or a mounted file)::

    {"primary": "<id>", "keys": {"<id>": "<base64 of 32 bytes>", ...}}
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import ConfigError, IntegrityError, KeyringError

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["BLOB_MAGIC", "BLOB_VERSION", "Keyring"]

BLOB_MAGIC = b"SRKR"
BLOB_VERSION = 1
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
_ENV = "STRONGROOM_KEYRING"
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _new_key_id() -> str:
    # Sortable by creation time for humans reading a keyring; the random suffix avoids same-second clashes.
    return time.strftime("k%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def _check_key_id(key_id: object) -> str:
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise KeyringError("key ids are 1-64 characters of A-Z a-z 0-9 . _ -")
    return key_id


def _header(key_id: str) -> bytes:
    encoded = key_id.encode("ascii")
    return BLOB_MAGIC + bytes((BLOB_VERSION, len(encoded))) + encoded


def _parse_header(blob: bytes) -> tuple[str, int]:
    """Return (key id, header length) or raise IntegrityError for anything that is not a v1 keyring blob."""
    if len(blob) < 6 or blob[:4] != BLOB_MAGIC:
        raise IntegrityError("not a strongroom keyring blob (bad magic)")
    if blob[4] != BLOB_VERSION:
        raise IntegrityError(f"unsupported keyring blob version {blob[4]}")
    id_len = blob[5]
    end = 6 + id_len
    if id_len == 0 or len(blob) < end + NONCE_SIZE + TAG_SIZE:
        raise IntegrityError("keyring blob is truncated")
    try:
        key_id = blob[6:end].decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError("keyring blob has a malformed key id") from None
    if not _KEY_ID.fullmatch(key_id):
        raise IntegrityError("keyring blob has a malformed key id")
    return key_id, end


class Keyring:
    """An immutable set of server keys with one primary; derive changed keyrings with add_primary/without."""

    __slots__ = ("_keys", "_primary")

    def __init__(self, keys: Mapping[str, bytes], primary: str) -> None:
        if not keys:
            raise KeyringError("a keyring needs at least one key")
        for key_id, key in keys.items():
            _check_key_id(key_id)
            if len(key) != KEY_SIZE:
                raise KeyringError(f"key {key_id!r} must be {KEY_SIZE} bytes")
        if primary not in keys:
            raise KeyringError(f"primary key {primary!r} is not in the keyring")
        self._keys: Mapping[str, bytes] = MappingProxyType(dict(keys))
        self._primary = primary

    @classmethod
    def from_json(cls, text: str) -> Keyring:
        """Parse a keyring document; problems are ConfigError(STRONGROOM_KEYRING), never echoing key bytes."""
        try:
            doc = json.loads(text)
        except (ValueError, TypeError):
            raise ConfigError(_ENV, "is not valid JSON") from None
        if not isinstance(doc, dict) or set(doc) != {"primary", "keys"}:
            raise ConfigError(_ENV, 'must be an object with exactly "primary" and "keys"')
        primary, raw_keys = doc["primary"], doc["keys"]
        if not isinstance(raw_keys, dict) or not raw_keys:
            raise ConfigError(_ENV, '"keys" must be a non-empty object of id -> base64 key')
        keys: dict[str, bytes] = {}
        for key_id, encoded in raw_keys.items():
            if not _KEY_ID.fullmatch(key_id):
                raise ConfigError(_ENV, f"key id {key_id[:64]!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")
            keys[key_id] = _decode_key(key_id, encoded)
        if not isinstance(primary, str) or primary not in keys:
            raise ConfigError(_ENV, '"primary" must name one of the keys')
        return cls(keys, primary)

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        """The configured keyring (variable or mounted file); a process that stores records cannot run without one."""
        text = settings.keyring_json()
        if not text:
            raise ConfigError(_ENV, "is required (or STRONGROOM_KEYRING_FILE)")
        return cls.from_json(text)

    @staticmethod
    def generate_json(key_id: str | None = None) -> str:
        """A fresh one-key keyring document (what `strongroom keyring generate`-style tooling prints)."""
        key_id = _check_key_id(key_id) if key_id is not None else _new_key_id()
        return Keyring({key_id: os.urandom(KEY_SIZE)}, key_id).to_json()

    def to_json(self) -> str:
        """The keyring document; it contains secrets, so write it only to a secret store, never to logs."""
        keys = {key_id: base64.b64encode(key).decode("ascii") for key_id, key in self._keys.items()}
        return json.dumps({"primary": self._primary, "keys": keys}, indent=2)

    def add_primary(self, key_id: str | None = None) -> Keyring:
        """A copy with a fresh random key that becomes primary; the old keys stay for decryption."""
        key_id = _check_key_id(key_id) if key_id is not None else _new_key_id()
        if key_id in self._keys:
            raise KeyringError(f"key {key_id!r} already exists")
        return Keyring({**self._keys, key_id: os.urandom(KEY_SIZE)}, key_id)

    def promote(self, key_id: str) -> Keyring:
        """A copy where an existing key becomes primary (roll out a key first, switch writes to it later)."""
        if key_id not in self._keys:
            raise KeyringError(f"key {key_id!r} is not in the keyring")
        return Keyring(self._keys, key_id)

    def without(self, key_id: str) -> Keyring:
        """A copy without ``key_id``; refuses the primary. Re-encrypt the blobs that use it first."""
        if key_id == self._primary:
            raise KeyringError(f"key {key_id!r} is the primary and cannot be removed")
        if key_id not in self._keys:
            raise KeyringError(f"key {key_id!r} is not in the keyring")
        return Keyring({k: v for k, v in self._keys.items() if k != key_id}, self._primary)

    @property
    def primary_id(self) -> str:
        return self._primary

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """Seal under the primary key; ``aad`` binds the blob to where it lives (e.g. its S3 key)."""
        header = _header(self._primary)
        nonce = os.urandom(NONCE_SIZE)
        sealed = AESGCM(self._keys[self._primary]).encrypt(nonce, plaintext, header + aad)
        return header + nonce + sealed

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        """Open a blob sealed by any key of this keyring with the same ``aad``."""
        key_id, end = _parse_header(blob)
        key = self._keys.get(key_id)
        if key is None:
            raise KeyringError(f"blob was encrypted with key {key_id!r}, which is not in the keyring")
        nonce = blob[end : end + NONCE_SIZE]
        try:
            return AESGCM(key).decrypt(nonce, blob[end + NONCE_SIZE :], blob[:end] + aad)
        except InvalidTag:
            raise IntegrityError(
                f"keyring blob (key {key_id!r}) failed authentication: tampered, or a different aad"
            ) from None

    def key_id_of(self, blob: bytes) -> str:
        """The key id a blob was sealed with (rotation re-encrypts blobs whose id is not the primary)."""
        return _parse_header(blob)[0]

    def __repr__(self) -> str:
        return f"Keyring(primary={self._primary!r}, key_ids={self.key_ids!r})"


def _decode_key(key_id: str, encoded: object) -> bytes:
    if not isinstance(encoded, str):
        raise ConfigError(_ENV, f"key {key_id!r} must be a base64 string")
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(_ENV, f"key {key_id!r} is not valid base64") from None
    if len(key) != KEY_SIZE:
        raise ConfigError(_ENV, f"key {key_id!r} must decode to {KEY_SIZE} bytes, got {len(key)}")
    return key
