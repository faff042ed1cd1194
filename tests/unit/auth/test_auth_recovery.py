"""The direct coincurve recovery agrees with eth-account's ``Account.recover_message`` on every input.

The verifier used ``Account.recover_message`` until the direct path proved about twice as fast; these tests are
what allows the swap: the same address for good and malleated (high-S) signatures, and a refusal exactly where
eth-account refuses (v values, r/s out of range, garbage).
"""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_defunct
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.auth import recovery
from shared.auth.recovery import SECP256K1_ORDER, eip191_digest, recover_address

pytestmark = pytest.mark.unit
KEY = "0x" + "42" * 32
ADDRESS = Account.from_key(KEY).address.lower()
TEXT = '"@method": POST\n"@signature-params": ("@method");created=1;expires=2'


def reference(text: str, signature: bytes) -> str | None:
    """What the verifier did before: eth-account, v 0/1 lifted to 27/28, any exception meaning "nobody"."""
    if signature[64] in (0, 1):
        signature = signature[:64] + bytes([signature[64] + 27])
    try:
        return str(Account.recover_message(encode_defunct(text=text), signature=signature)).lower()
    except Exception:
        return None


def signed(text: str = TEXT, key: str = KEY) -> bytes:
    return bytes(Account.from_key(key).sign_message(encode_defunct(text=text)).signature)


def malleated(signature: bytes) -> bytes:
    """(r, n - s, the other v): the other valid signature of the same message by the same key (high S if s was
    low). eth-account signs with v = 27/28."""
    s = int.from_bytes(signature[32:64], "big")
    return signature[:32] + (SECP256K1_ORDER - s).to_bytes(32, "big") + bytes([55 - signature[64]])


def test_digest_is_eip191_personal_sign() -> None:
    for text in (TEXT, "", "h\u00e9llo \u2603"):  # non-ASCII: the length prefix counts UTF-8 bytes
        assert eip191_digest(text) == _hash_eip191_message(encode_defunct(text=text))


def test_recovers_the_signer_lowercase() -> None:
    signature = signed()
    assert recover_address(eip191_digest(TEXT), signature) == ADDRESS == reference(TEXT, signature)


def test_high_s_is_treated_as_eth_account_does() -> None:
    signature = malleated(signed())
    assert int.from_bytes(signature[32:64], "big") > SECP256K1_ORDER // 2
    assert recover_address(eip191_digest(TEXT), signature) == reference(TEXT, signature) == ADDRESS


@pytest.mark.parametrize("v", range(256))
def test_every_v_byte_as_eth_account(v: int) -> None:
    signature = signed()[:64] + bytes([v])
    assert recover_address(eip191_digest(TEXT), signature) == reference(TEXT, signature)


@pytest.mark.parametrize(
    "r, s",
    [
        (0, 1),
        (1, 0),
        (SECP256K1_ORDER, 1),
        (1, SECP256K1_ORDER),
        (SECP256K1_ORDER - 1, SECP256K1_ORDER - 1),
        (2**256 - 1, 1),
        (1, 2**256 - 1),
    ],
)
def test_r_and_s_edges_as_eth_account(r: int, s: int) -> None:
    for v in (27, 28):
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v])
        assert recover_address(eip191_digest(TEXT), signature) == reference(TEXT, signature)


def test_wrong_length_recovers_nobody() -> None:
    for signature in (signed()[:64], signed() + b"\x00", b""):
        assert recover_address(eip191_digest(TEXT), signature) is None


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=65, max_size=65), st.text(max_size=64))
def test_arbitrary_bytes_as_eth_account(signature: bytes, text: str) -> None:
    assert recover_address(eip191_digest(text), signature) == reference(text, signature)


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32).filter(lambda k: 0 < int.from_bytes(k, "big") < SECP256K1_ORDER))
def test_any_key_and_its_malleated_twin(key: bytes) -> None:
    signature = signed(TEXT, "0x" + key.hex())
    expected = Account.from_key(key).address.lower()
    assert recover_address(eip191_digest(TEXT), signature) == expected
    assert (
        recover_address(eip191_digest(TEXT), malleated(signature)) == expected == reference(TEXT, malleated(signature))
    )


def test_recovery_runs_on_coincurve(monkeypatch: pytest.MonkeyPatch) -> None:
    """The speed comes from libsecp256k1: the recovery must go through coincurve, not a pure-Python curve."""
    import coincurve

    calls: list[Any] = []
    original = coincurve.PublicKey.from_signature_and_message

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    assert recovery.PublicKey is coincurve.PublicKey
    monkeypatch.setattr(recovery.PublicKey, "from_signature_and_message", spy)
    assert recover_address(eip191_digest(TEXT), signed()) == ADDRESS
    assert len(calls) == 1
