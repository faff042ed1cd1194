"""EIP-191 signer recovery straight through coincurve (libsecp256k1), without eth-account's conversion layers.

``Account.recover_message`` spends about half its time around the one libsecp256k1 call: ``HexBytes`` and
``to_int`` conversions, eth_keys' object validation and an EIP-55 checksum (a third keccak) of an address the
verifier lowercases again. The verifier only needs "which lowercase address produced this signature over this
hash", so this module makes the same libsecp256k1 call on the same 64 bytes and the same recovery id, and accepts
exactly what eth-account accepts:

- ``v`` as 0/1, 27/28, or an EIP-155 value (35 and up; its parity is the recovery id), like ``to_standard_v``;
- ``r`` and ``s`` below the curve order (eth_keys' range check; libsecp256k1 refuses the rest too);
- high-S signatures: neither eth-account nor libsecp256k1's recover normalises S, so a malleated (r, n - s,
  v ^ 1) signature recovers the same address, as it does there. Replay protection never relies on signature
  bytes (nonces are keyed by keyid and nonce), so this malleability is harmless.

``tests/unit/auth/test_auth_recovery.py`` checks this against ``Account.recover_message`` on valid, malleated and
arbitrary byte strings.
"""

from __future__ import annotations

from coincurve import PublicKey
from eth_hash.auto import keccak

SIGNATURE_BYTES = 65
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_EIP191_PREFIX = b"\x19Ethereum Signed Message:\n"
_EIP155_OFFSET = 35


def eip191_digest(text: str) -> bytes:
    """``keccak256("\\x19Ethereum Signed Message:\\n" + len + text)``: what ``personal_sign`` signs (and what
    ERC-1271 wallets are asked about), over the UTF-8 bytes of ``text`` like ``encode_defunct(text=...)``."""
    body = text.encode("utf-8")
    return keccak(_EIP191_PREFIX + str(len(body)).encode("ascii") + body)


def recovery_id(v: int) -> int | None:
    """The recovery id (0 or 1) for a signature's last byte, as eth-account's ``to_standard_v``; ``None`` if
    eth-account would refuse it (2..26, 29..34)."""
    if v in (0, 1):
        return v
    if v in (27, 28):
        return v - 27
    if v >= _EIP155_OFFSET:
        return (v - _EIP155_OFFSET) % 2
    return None


def recover_address(digest: bytes, signature: bytes) -> str | None:
    """The lowercase 0x address whose key made ``signature`` (r || s || v) over the 32-byte ``digest``;
    ``None`` when no key did (wrong length, bad v, r or s out of range, no curve point)."""
    if len(signature) != SIGNATURE_BYTES:
        return None
    rec_id = recovery_id(signature[64])
    if rec_id is None:
        return None
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big")
    if r >= SECP256K1_ORDER or s >= SECP256K1_ORDER:
        return None
    try:
        point = PublicKey.from_signature_and_message(signature[:64] + bytes((rec_id,)), digest, hasher=None)
    except Exception:  # coincurve raises ValueError (zero r/s, no point); any failure means "not this signer"
        return None
    return "0x" + keccak(point.format(compressed=False)[1:])[-20:].hex()
