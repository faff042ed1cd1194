"""A secp256k1 signing key for EIP-191 messages, straight through coincurve (libsecp256k1).

The client signs every request with this instead of ``eth_account``: importing ``eth_account`` costs about half a
second (its ABI, RLP and typing layers), which every ``strongroom client`` command would pay before doing
anything. The one libsecp256k1 call is the same (RFC 6979 deterministic nonce, low-S), so the signatures are
byte-for-byte those ``Account.sign_message`` makes; ``tests/unit/auth/test_auth_keys.py`` checks that.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from coincurve import PrivateKey
from eth_hash.auto import keccak

from shared.auth.recovery import SECP256K1_ORDER, eip191_digest

KEY_BYTES = 32
_V_OFFSET = 27  # Ethereum's v: 27 + the recovery id


@dataclass(frozen=True)
class SignedMessage:
    """What ``sign_message`` returns: the 65-byte ``r || s || v`` signature (``v`` is 27 or 28)."""

    signature: bytes


class SigningKey:
    """An Ethereum account key: its lowercase ``address``, its raw ``key`` bytes, and EIP-191 signing.

    ``repr`` never shows the key, so an identity can be logged or appear in a traceback safely.
    """

    __slots__ = ("_private", "address", "key")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES or not 0 < int.from_bytes(key, "big") < SECP256K1_ORDER:
            raise ValueError("a signing key is 32 bytes, between 1 and the secp256k1 order")
        self.key = bytes(key)
        self._private = PrivateKey(self.key)
        public = self._private.public_key.format(compressed=False)[1:]
        self.address = "0x" + keccak(public)[-20:].hex()

    @classmethod
    def generate(cls) -> SigningKey:
        while True:  # a random 32 bytes is out of range with probability ~2**-128
            candidate = secrets.token_bytes(KEY_BYTES)
            if 0 < int.from_bytes(candidate, "big") < SECP256K1_ORDER:
                return cls(candidate)

    @classmethod
    def from_key(cls, key: str | bytes) -> SigningKey:
        """From raw bytes or hex text (with or without ``0x``), as ``Account.from_key`` accepts them."""
        if isinstance(key, str):
            text = key.removeprefix("0x").removeprefix("0X")
            if len(text) != 2 * KEY_BYTES:
                raise ValueError("a hex signing key has 64 digits")
            key = bytes.fromhex(text)
        return cls(key)

    def sign_digest(self, digest: bytes) -> bytes:
        """``r || s || v`` over a 32-byte hash."""
        signature = self._private.sign_recoverable(digest, hasher=None)
        return signature[:64] + bytes((signature[64] + _V_OFFSET,))

    def sign_text(self, text: str) -> bytes:
        """EIP-191 ``personal_sign`` of ``text``'s UTF-8 bytes, like ``sign_message(encode_defunct(text=text))``."""
        return self.sign_digest(eip191_digest(text))

    def sign_message(self, signable_message: Any) -> SignedMessage:
        """Sign an ``eth_account`` ``SignableMessage`` (``version``, ``header``, ``body``), as ``LocalAccount`` does."""
        version, header, body = signable_message.version, signable_message.header, signable_message.body
        return SignedMessage(self.sign_digest(keccak(b"\x19" + version + header + body)))

    def __repr__(self) -> str:
        return f"SigningKey(address={self.address!r})"
