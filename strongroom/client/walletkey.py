"""An X25519 encryption key re-derived from a wallet signature (docs/encryption.md section 4).

A wallet user has no key file to carry around, only the wallet. The encryption key is therefore derived from the
wallet's EIP-191 ``personal_sign`` signature over a fixed, domain-separated message naming strongroom, this
purpose, a version, the address and a chain id:

    message = wallet_key_message(address, chain_id)                    (ASCII, LF line ends, no trailing LF)
    r, s, v = personal_sign(message)                                   (must recover to ``address``)
    s       = min(s, n - s)                                            (low-S: the malleated twin derives the same)
    seed    = HKDF-SHA256(ikm = r || s (64 bytes), salt = "strongroom/walletkey/v1", info = "strongroom x25519 v1")
    secret  = clamp(seed)                                              (RFC 7748, as nacl does)
    public  = X25519(secret, 9)

Only the key holder can make the signature, and ECDSA with RFC 6979 nonces (libsecp256k1, MetaMask, ethers,
hardware wallets) gives the same signature every time, so the same wallet re-derives the same key anywhere: here
(``derive_from_signer``, ``strongroom client keygen --from-wallet-key``) and in the browser page
(``api_service/static/walletkey.js``). A signer that signs non-deterministically is detected by signing twice and
refused: a key derived from it could never be derived again.

The signature *is* the secret: it must never be sent, logged or stored. Messages here never contain it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.auth.keys import SigningKey
from shared.auth.recovery import SECP256K1_ORDER, eip191_digest, recover_address
from shared.auth.signer import MessageSigner
from shared.crypto import keywrap
from shared.errors import CryptoError

VERSION = 1
HKDF_SALT = b"strongroom/walletkey/v1"
HKDF_INFO = b"strongroom x25519 v1"
DEFAULT_CHAIN_ID = 1  # what the browser page signs with (docs/browser.md "Chain id")

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")  # fullmatch: "$" would let a final newline in
_HALF_ORDER = SECP256K1_ORDER // 2
_SIGNATURE_INVALID = "wallet_signature_invalid"
_NOT_DETERMINISTIC = "wallet_not_deterministic"


@dataclass(frozen=True)
class WalletKey:
    """A derived X25519 key pair; the secret stays out of ``repr``."""

    secret: bytes = field(repr=False)
    public_key: str  # base64 of 32 bytes, what an operation's encryption_public_key takes


def wallet_key_message(address: str, chain_id: int = DEFAULT_CHAIN_ID) -> str:
    """The exact text the wallet signs (EIP-191 ``personal_sign`` of its UTF-8 bytes, which are ASCII).

    The address is lowercased so every client builds the same bytes. The first line names strongroom, the
    purpose and the version; the text cannot be an RFC 9421 signature base (those lines start with ``"@``), so no
    request signature can ever be this message, nor this signature a request signature.
    """
    if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
        raise ValueError("address must be 0x followed by 40 hex digits")
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or not 0 < chain_id < 2**53:
        raise ValueError("chain id must be a positive integer")
    return (
        f"strongroom encryption key v{VERSION}\n"
        "\n"
        "Signing this message derives the X25519 key that decrypts what is shared with you on strongroom. "
        "Anyone holding this signature can read it: sign only in strongroom's own page or CLI, "
        "never on another site. It sends no transaction and costs nothing.\n"
        "\n"
        f"Address: {address.lower()}\n"
        f"Chain ID: {chain_id}"
    )


def _signature_bytes(signature: bytes | str) -> bytes:
    if isinstance(signature, str):
        text = signature.removeprefix("0x").removeprefix("0X")
        try:
            signature = bytes.fromhex(text)
        except ValueError:
            raise CryptoError("the wallet signature is not hex", code=_SIGNATURE_INVALID) from None
    if len(signature) != 65:
        raise CryptoError(
            "the wallet's signature is not a 65-byte ECDSA signature (a smart-contract wallet cannot derive a key): "
            "use an identity file instead",
            code=_SIGNATURE_INVALID,
        )
    return bytes(signature)


def canonical_signature(signature: bytes | str) -> bytes:
    """``r || s || v`` with low S and ``v`` in {27, 28}: the one form every wallet's signature maps to.

    Wallets write ``v`` as 0/1 or 27/28, and (r, n - s) with the other v is the same signature; both would
    otherwise derive different keys from one wallet.
    """
    raw = _signature_bytes(signature)
    v = raw[64]
    if v in (0, 1):
        v += 27
    if v not in (27, 28):
        raise CryptoError("the wallet signature has an invalid v byte", code=_SIGNATURE_INVALID)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big")
    if not (0 < r < SECP256K1_ORDER and 0 < s < SECP256K1_ORDER):
        raise CryptoError("the wallet signature is out of range", code=_SIGNATURE_INVALID)
    if s > _HALF_ORDER:
        s, v = SECP256K1_ORDER - s, 55 - v  # the other recovery id: 27 <-> 28
    return raw[:32] + s.to_bytes(32, "big") + bytes((v,))


def _clamp(seed: bytes) -> bytes:
    scalar = bytearray(seed)
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    return bytes(scalar)


def derive_from_signature(signature: bytes | str, address: str, chain_id: int = DEFAULT_CHAIN_ID) -> WalletKey:
    """The key pair from ``address``'s signature over ``wallet_key_message(address, chain_id)``.

    The signature must recover to ``address``: a wallet that signed with another account would otherwise yield a
    key nobody could re-derive for this address.
    """
    message = wallet_key_message(address, chain_id)
    canonical = canonical_signature(signature)
    if recover_address(eip191_digest(message), canonical) != address.lower():
        raise CryptoError(
            "the wallet signature was not made by this address over strongroom's key message", code=_SIGNATURE_INVALID
        )
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=HKDF_INFO).derive(canonical[:64])
    secret = _clamp(seed)
    return WalletKey(secret, keywrap.public_key_from_secret(secret))


def _sign(signer: SigningKey | MessageSigner, text: str) -> bytes:
    if isinstance(signer, SigningKey):
        return signer.sign_text(text)
    from eth_account.messages import encode_defunct  # only for foreign signers (LocalAccount, hardware wallets)

    signed: Any = signer.sign_message(encode_defunct(text=text))
    return bytes(signed.signature)


def derive_from_signer(signer: SigningKey | MessageSigner, chain_id: int = DEFAULT_CHAIN_ID) -> WalletKey:
    """Ask ``signer`` to sign the key message twice and derive the key; refuse a non-deterministic signer.

    ``signer`` is a ``SigningKey`` (the identity file's key) or anything with ``address`` and eth-account's
    ``sign_message`` (a ``LocalAccount``, a hardware or remote wallet).
    """
    address = str(signer.address).lower()
    message = wallet_key_message(address, chain_id)
    first = canonical_signature(_sign(signer, message))
    second = canonical_signature(_sign(signer, message))
    if first != second:
        raise CryptoError(
            "this wallet does not sign deterministically (RFC 6979), so a key derived from its signature could not "
            "be derived again: use an identity file (`strongroom client keygen`) instead",
            code=_NOT_DETERMINISTIC,
        )
    return derive_from_signature(first, address, chain_id)
