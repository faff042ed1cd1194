"""Property tests: a signature covers exactly the request it was made for, and only for its own address."""

from __future__ import annotations

import dataclasses
import string

import pytest
from conftest import NOW, VerifyFixture, custom_signed, request_for
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.auth.signer import sign_request
from shared.auth.verifier import SignedRequest
from shared.errors import AuthError

pytestmark = pytest.mark.unit

KEY = "0x" + "42" * 32
_PCHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"

methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){0,2}", fullmatch=True)
ports = st.one_of(st.none(), st.integers(1, 65535))
segments = st.lists(
    st.one_of(st.text(_PCHARS, min_size=1, max_size=12), st.sampled_from(["%2F", "%20", "%C3%A9"])),
    max_size=5,
)
queries = st.one_of(st.just(""), st.text(_PCHARS + "/?", min_size=1, max_size=30))
bodies = st.binary(max_size=512)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes]:
    host, port = draw(hosts), draw(ports)
    authority = host if port is None else f"{host}:{port}"
    path = "/" + "/".join(draw(segments))
    query = draw(queries)
    url = f"https://{authority}{path}" + (f"?{query}" if query else "")
    return draw(methods), url, draw(bodies)


def verifies(request: SignedRequest) -> bool:
    try:
        VerifyFixture().verify(request)
    except AuthError as exc:
        assert exc.code in {"signature_invalid", "digest_mismatch"}, exc.code
        return False
    return True


@settings(max_examples=60, deadline=None)
@given(requests(), st.data())
def test_any_change_after_signing_fails(original: tuple[str, str, bytes], data: st.DataObject) -> None:
    method, url, body = original
    request = request_for(method, url, body, headers=sign_request(KEY, method, url, body, created=NOW))
    assert verifies(request)
    field = data.draw(st.sampled_from(["method", "authority", "path", "query", "body"]))
    value: object
    if field == "method":
        value = data.draw(methods.filter(lambda m: m != method))
    elif field == "authority":
        value = data.draw(hosts.filter(lambda h: h != request.authority))
    elif field == "path":
        value = data.draw(segments.map(lambda s: "/" + "/".join(s)).filter(lambda p: p != request.path))
    elif field == "query":
        value = "?" + data.draw(queries.filter(lambda q: "?" + q != request.query and q != request.query))
    else:
        value = data.draw(bodies.filter(lambda b: b != body))
    assert not verifies(dataclasses.replace(request, **{field: value}))


private_keys = st.integers(1, 2**255).map(lambda n: "0x" + n.to_bytes(32, "big").hex())


@settings(max_examples=30, deadline=None)
@given(private_keys, private_keys)
def test_signatures_never_verify_for_another_address(signing_key: str, claimed_key: str) -> None:
    claimed = Account.from_key(claimed_key).address.lower()
    params = {"created": NOW, "expires": NOW + 60, "nonce": "A" * 22, "keyid": f"erc8128:1:{claimed}"}
    request = custom_signed(key=signing_key, params=params)
    assert verifies(request) == (Account.from_key(signing_key).address.lower() == claimed)
