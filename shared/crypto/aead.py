"""AES-256-GCM backends: libsodium (through pynacl) where the CPU has AES-NI/ARMv8-CE, else ``cryptography``.

libsodium only ships a constant-time AES-GCM on hardware with AES instructions and refuses it elsewhere, so
the choice is made at run time. Both backends produce identical bytes; tests run the vectors through each.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

import nacl.bindings
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl import _sodium
from nacl.exceptions import CryptoError as NaclCryptoError

from shared.errors import IntegrityError

__all__ = ["BACKENDS", "Aead", "AeadFactory", "default_backend", "nacl_aes_gcm_available"]

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16

Buffer = bytes | bytearray | memoryview


class Aead(Protocol):
    """One AES-256-GCM key. ``open`` raises IntegrityError (without detail) when authentication fails."""

    name: str

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes: ...

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes = b"") -> bytes: ...

    def open_into(self, nonce: bytes, ciphertext: Buffer, out: memoryview) -> None:
        """Decrypt into ``out`` (exactly ``len(ciphertext) - 16`` bytes); IntegrityError, and ``out`` zeroed,
        when authentication fails."""


AeadFactory = Callable[[bytes], Aead]


class NaclAesGcm:
    """libsodium's AES-256-GCM (hardware only)."""

    name = "pynacl"
    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("AES-256-GCM keys are 32 bytes")
        self._key = bytes(key)

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
        return nacl.bindings.crypto_aead_aes256gcm_encrypt(bytes(plaintext), aad or None, nonce, self._key)

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes = b"") -> bytes:
        if len(ciphertext) < TAG_SIZE:  # pynacl would size a negative buffer
            raise IntegrityError("ciphertext shorter than its tag")
        try:
            return nacl.bindings.crypto_aead_aes256gcm_decrypt(bytes(ciphertext), aad or None, nonce, self._key)
        except NaclCryptoError:
            raise IntegrityError("authentication failed") from None

    def open_into(self, nonce: bytes, ciphertext: Buffer, out: memoryview) -> None:
        if len(out) != len(memoryview(ciphertext)) - TAG_SIZE:
            raise ValueError("the output buffer must be the ciphertext's length minus the tag")
        try:
            out[:] = self.open(nonce, bytes(ciphertext))  # pynacl returns new bytes: one copy more than OpenSSL
        except IntegrityError:
            out[:] = bytes(len(out))
            raise

    def __repr__(self) -> str:
        return "NaclAesGcm(<key>)"


class CryptographyAesGcm:
    """OpenSSL's AES-256-GCM through ``cryptography`` (any CPU)."""

    name = "cryptography"
    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("AES-256-GCM keys are 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad or None)

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes = b"") -> bytes:
        try:
            return self._aead.decrypt(nonce, ciphertext, aad or None)
        except InvalidTag:
            raise IntegrityError("authentication failed") from None

    def open_into(self, nonce: bytes, ciphertext: Buffer, out: memoryview) -> None:
        try:
            self._aead.decrypt_into(nonce, ciphertext, None, out)
        except InvalidTag:
            out[:] = bytes(len(out))  # never leave unauthenticated plaintext behind, whatever OpenSSL wrote
            raise IntegrityError("authentication failed") from None

    def __repr__(self) -> str:
        return "CryptographyAesGcm(<key>)"


@functools.cache
def nacl_aes_gcm_available() -> bool:
    """True when libsodium offers AES-256-GCM on this CPU (importing nacl.bindings ran sodium_init)."""
    probe = getattr(nacl.bindings, "crypto_aead_aes256gcm_is_available", None)
    if probe is not None:
        return bool(probe())
    return bool(_sodium.lib.crypto_aead_aes256gcm_is_available())


BACKENDS: dict[str, AeadFactory] = {"pynacl": NaclAesGcm, "cryptography": CryptographyAesGcm}


def default_backend() -> AeadFactory:
    """pynacl where the hardware allows it, else cryptography."""
    return NaclAesGcm if nacl_aes_gcm_available() else CryptographyAesGcm
