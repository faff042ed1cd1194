"""Our coincurve signing key against eth-account, the reference: same address, same signature bytes."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.auth.keys import SigningKey
from shared.auth.recovery import SECP256K1_ORDER

pytestmark = pytest.mark.unit

keys = st.integers(min_value=1, max_value=SECP256K1_ORDER - 1).map(lambda n: n.to_bytes(32, "big"))


@settings(max_examples=50, deadline=None)
@given(key=keys, text=st.text(max_size=200))
def test_signs_exactly_as_eth_account(key: bytes, text: str) -> None:
    ours = SigningKey(key)
    reference = Account.from_key(key)
    assert ours.address == reference.address.lower()
    expected = bytes(reference.sign_message(encode_defunct(text=text)).signature)
    assert ours.sign_text(text) == expected
    assert ours.sign_message(encode_defunct(text=text)).signature == expected


def test_reads_the_hex_forms_eth_account_reads() -> None:
    key = SigningKey.generate()
    for text in (key.key.hex(), "0x" + key.key.hex()):
        assert SigningKey.from_key(text).address == key.address
    assert key.key.hex() not in repr(key)


@pytest.mark.parametrize("bad", [b"", b"\x00" * 32, SECP256K1_ORDER.to_bytes(32, "big"), b"\x01" * 31, "0x12"])
def test_refuses_keys_outside_the_curve_order(bad: str | bytes) -> None:
    with pytest.raises(ValueError):
        SigningKey.from_key(bad)
