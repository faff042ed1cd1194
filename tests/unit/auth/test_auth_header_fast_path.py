"""The regular-expression readings of ``Signature-Input`` and ``Signature`` (``shared.auth.headers``) are a strict
subset of RFC 9651: for every value they accept they yield exactly what ``http_sf`` yields, and they accept nothing
``http_sf`` refuses. Whatever they do not accept goes to ``http_sf`` unchanged."""

from __future__ import annotations

import base64
from typing import Any

import http_sf
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shared.auth.headers import _simple_input, _simple_signature, parse_signature
from shared.auth.signer import sign_request
from shared.errors import AuthError

pytestmark = pytest.mark.unit


def full(value: str) -> Any:
    try:
        return http_sf.parse(value.encode("ascii"), tltype="dictionary")
    except http_sf.StructuredFieldError:
        return "refused"


def same_or_declined(fast: Any, value: str) -> None:
    if fast is not None:
        assert fast == full(value), value


# Pieces chosen to sit on both sides of the subset's edges: escapes, tokens, booleans, decimals, spaces, repeats,
# upper case, long integers, several members.
keys = st.sampled_from(["eth", "sig", "a*b", "x-1", "*", "Eth", "1a", "created", "expires", "nonce", "keyid", "tag"])
strings = st.one_of(
    st.text(st.sampled_from(list('ab ;=()"\\:,-_~*@')), max_size=12), st.sampled_from(["@method", "@path"])
)
values = st.one_of(
    strings.map(lambda s: f'"{s}"'),
    st.integers(-(10**17), 10**17).map(str),
    st.sampled_from(["tok", "?1", "?0", "1.5", ":YQ==:", "", "00012", "-0"]),
)
params = st.lists(st.tuples(keys, values), max_size=5).map(lambda ps: "".join(f";{k}={v}" for k, v in ps))
items = st.lists(strings.map(lambda s: f'"{s}"'), max_size=5)
separators = st.sampled_from([" ", "  ", ""])
members = st.builds(lambda k, i, sep, p: f"{k}=({sep.join(i)}){p}", keys, items, separators, params)
inputs = st.one_of(members, st.lists(members, min_size=2, max_size=3).map(", ".join))


@settings(max_examples=300, deadline=None)
@given(inputs)
@example('eth=("@method" "a b");nonce="x;y=1";created=1')
@example('eth=("@method");created=1;created=2')
@example("eth=();created=0012;expires=-0")
@example('eth=("@method");nonce=""')
@example('eth=("@method");created=1234567890123456')
def test_the_signature_input_reading_agrees_with_http_sf(value: str) -> None:
    same_or_declined(_simple_input(value), value)


b64 = st.binary(max_size=70).map(lambda b: base64.b64encode(b).decode())
mangled = st.one_of(
    b64,
    b64.map(lambda s: s.rstrip("=")),
    b64.map(lambda s: s + "="),
    b64.map(lambda s: s.replace("A", "-")),
    st.text(st.sampled_from(list("AQab+/=_-")), max_size=12),
)
signatures = st.builds(lambda k, v, p: f"{k}=:{v}:{p}", keys, mangled, st.sampled_from(["", ";a=1"]))


@settings(max_examples=300, deadline=None)
@given(signatures)
@example("eth=::")
@example("eth=:YQ==:")
@example("eth=:YR==:")  # non-zero padding bits
@example("eth=:=:")
@example("eth=:YQ=:")
def test_the_signature_reading_agrees_with_http_sf(value: str) -> None:
    same_or_declined(_simple_signature(value), value)


def test_what_clients_send_takes_the_fast_path() -> None:
    signed = sign_request("0x" + "42" * 32, "POST", "https://api.example/api/v1/operations?x=1", b"{}")
    assert _simple_input(signed["Signature-Input"]) == full(signed["Signature-Input"])
    assert _simple_signature(signed["Signature"]) == full(signed["Signature"])
    headers = {name.lower(): value for name, value in signed.items()}
    assert parse_signature(headers).nonce


def test_refusals_are_unchanged_for_values_outside_the_subset() -> None:
    signed = sign_request("0x" + "42" * 32, "GET", "https://api.example/api/v1/operations", b"")
    headers = {name.lower(): value for name, value in signed.items()}
    for bad in ("eth=:not base64:", "eth=:YQ==", "Eth=:YQ==:", "eth=:YQ==:;a=1"):
        with pytest.raises(AuthError) as refused:
            parse_signature({**headers, "signature": bad})
        assert refused.value.code == "signature_malformed"
