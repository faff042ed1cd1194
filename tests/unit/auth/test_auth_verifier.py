"""The verifier's acceptance rules, one refusal code per rule (Redis replaced by an in-process SET NX)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
from typing import Any

import pytest
from conftest import ADDRESS, KEY, NOW, OTHER_KEY, MemoryNonces, VerifyFixture, custom_signed, signed
from eth_account import Account

from shared.auth.base import serialize_params
from shared.auth.verifier import SignedRequest, ensure_grantee
from shared.errors import AuthError, NotGrantee

pytestmark = pytest.mark.unit
FIVE = ("@method", "@authority", "@path", "@query", "content-digest")
THREE = ("@method", "@authority", "@path")


def refused(verify: VerifyFixture, request: SignedRequest, **overrides: Any) -> AuthError:
    with pytest.raises(AuthError) as info:
        verify.verify(request, **overrides)
    assert info.value.status == 401
    return info.value


def with_headers(request: SignedRequest, **changes: str | None) -> SignedRequest:
    headers = {k: v for k, v in request.headers.items()}
    for name, value in changes.items():
        name = name.replace("_", "-").lower()
        if value is None:
            headers = {k: v for k, v in headers.items() if k.lower() != name}
        else:
            headers = {k: v for k, v in headers.items() if k.lower() != name} | {name: value}
    return dataclasses.replace(request, headers=headers)


def test_eth_keys_uses_coincurve() -> None:
    """Pure-Python recovery is ~50x slower; the deployment must have the coincurve backend."""
    from eth_keys import KeyAPI
    from eth_keys.backends import CoinCurveECCBackend

    assert isinstance(KeyAPI().backend, CoinCurveECCBackend)


def test_a_signed_request_verifies(verify: VerifyFixture) -> None:
    request = signed()
    signer = verify.verify(request)
    assert signer.address == ADDRESS
    assert (signer.chain_id, signer.created, signer.expires) == (1, NOW, NOW + 60)
    assert signer.keyid == f"erc8128:1:{ADDRESS}"
    (key,) = verify.nonces.keys
    assert key.endswith(f":{signer.nonce}") and verify.nonces.keys[key][1] == 60 + 60  # expires + 60 s - now


def test_eth_account_local_account_signer(verify: VerifyFixture) -> None:
    account = Account.from_key(KEY)
    assert verify.verify(signed(key=account)).address == ADDRESS  # type: ignore[arg-type]


def test_any_label_and_v_0_1_are_accepted(verify: VerifyFixture) -> None:
    assert verify.verify(signed(label="sig1")).address == ADDRESS
    request = custom_signed()
    raw = bytearray(base64.b64decode(request.headers["signature"].split("=:", 1)[1].rstrip(":")))
    raw[64] -= 27
    request = with_headers(request, signature=f"eth=:{base64.b64encode(bytes(raw)).decode()}:")
    assert verify.verify(request).address == ADDRESS


def test_replay_is_refused_and_nonce_is_not_burned_by_bad_signatures(verify: VerifyFixture) -> None:
    good = custom_signed()
    forged = custom_signed(key=OTHER_KEY, params={**_params(), "keyid": f"erc8128:1:{ADDRESS}"})
    assert refused(verify, forged).code == "signature_invalid"
    assert verify.nonces.keys == {}
    verify.verify(good)
    assert refused(verify, good).code == "nonce_replayed"


def test_keyid_case_does_not_open_a_second_nonce(verify: VerifyFixture) -> None:
    verify.verify(custom_signed())
    upper = custom_signed(params={**_params(), "keyid": f"erc8128:1:{ADDRESS.upper().replace('0X', '0x')}"})
    assert refused(verify, upper).code == "nonce_replayed"


def _params(**changes: Any) -> dict[str, Any]:
    params = {
        "created": NOW,
        "expires": NOW + 60,
        "nonce": "AAECAwQFBgcICQoLDA0ODw",
        "keyid": f"erc8128:1:{ADDRESS}",
    }
    params.update(changes)
    return {k: v for k, v in params.items() if v is not None}


@pytest.mark.parametrize(
    ("request_factory", "code"),
    [
        (lambda: with_headers(signed(), signature_input=None, signature=None), "signature_missing"),
        (lambda: with_headers(signed(), signature=None), "signature_missing"),
        (lambda: with_headers(signed(), signature_input=None), "signature_missing"),
        (lambda: custom_signed(label="sig1", signature_label="eth"), "signature_malformed"),
        (lambda: custom_signed(covered=THREE, query="?a=1"), "signature_malformed"),
        (lambda: custom_signed(covered=(*THREE, "content-digest"), query="?a=1"), "signature_malformed"),
        (lambda: custom_signed(covered=(*THREE, "@query"), query="?a=1"), "signature_malformed"),
        (lambda: custom_signed(covered=("@method", "@path", "@query", "content-digest")), "signature_malformed"),
        (lambda: custom_signed(params=_params(nonce=None)), "signature_malformed"),
        (lambda: custom_signed(params=_params(nonce="")), "signature_malformed"),
        (lambda: custom_signed(params=_params(nonce="n" * 129)), "signature_malformed"),
        (lambda: custom_signed(params=_params(alg="ecdsa-p256-sha256")), "signature_malformed"),
        (lambda: custom_signed(params=_params(keyid="erc8128:1:0x1234")), "signature_malformed"),
        (lambda: custom_signed(params=_params(created=None)), "signature_malformed"),
        (lambda: custom_signed(params=_params(expires=NOW)), "signature_malformed"),
        (lambda: custom_signed(params=_params(created=NOW - 120, expires=NOW - 1)), "signature_expired"),
        (lambda: custom_signed(params=_params(created=NOW + 61, expires=NOW + 120)), "signature_expired"),
        (lambda: custom_signed(params=_params(expires=NOW + 301)), "signature_expired"),
        (lambda: custom_signed(params=_params(keyid=f"erc8128:5:{ADDRESS}")), "chain_not_allowed"),
        (lambda: custom_signed(digest="sha-256=:" + "A" * 43 + "=:"), "digest_mismatch"),
        (lambda: custom_signed(digest="sha-512=:AAAA:"), "digest_mismatch"),
        (lambda: dataclasses.replace(signed(), body=b'{"agent":"y"}'), "digest_mismatch"),
        (lambda: with_headers(signed(), content_digest=None), "digest_mismatch"),
        (lambda: with_headers(signed(), signature="eth=:not*base64:"), "signature_malformed"),
        (lambda: with_headers(signed(), signature="eth=:QUJD=A:"), "signature_malformed"),
        (lambda: with_headers(signed(), signature='eth="text"'), "signature_malformed"),
        (lambda: with_headers(signed(), signature_input="eth=" + "(" * 5000), "signature_malformed"),
        (lambda: with_headers(signed(), signature="eth=:" + "A" * 5000 + ":"), "signature_malformed"),
        (lambda: with_headers(signed(), signature_input='eth=("@method");nonce="é"'), "signature_malformed"),
        (lambda: with_headers(signed(), signature_input='eth=("@method"), eth=("@path")'), "signature_malformed"),
        (lambda: custom_signed(covered=(*FIVE, "@method")), "signature_malformed"),
        (
            lambda: with_headers(
                custom_signed(), signature_input="eth=" + serialize_params((*FIVE, "@target-uri"), _params())
            ),
            "signature_malformed",
        ),
        (
            lambda: with_headers(
                custom_signed(covered=(*FIVE, "x-extra"), extra_headers={"x-extra": "v"}), x_extra=None
            ),
            "signature_malformed",
        ),
    ],
)
def test_refusals(verify: VerifyFixture, request_factory: Any, code: str) -> None:
    assert refused(verify, request_factory()).code == code
    assert verify.nonces.keys == {}


def test_another_addresss_signature_is_invalid(verify: VerifyFixture) -> None:
    other = Account.from_key(OTHER_KEY).address.lower()
    request = custom_signed(params=_params(keyid=f"erc8128:1:{other}"))  # signed by KEY, claims OTHER
    assert refused(verify, request).code == "signature_invalid"


def test_extra_covered_header_fields_are_verified(verify: VerifyFixture) -> None:
    request = custom_signed(covered=(*FIVE, "x-extra"), extra_headers={"x-extra": "v"})
    assert refused(verify, with_headers(request, x_extra="w")).code == "signature_invalid"
    assert verify.verify(request).address == ADDRESS


def test_truncated_signature_is_invalid(verify: VerifyFixture) -> None:
    request = with_headers(signed(), signature="eth=:" + base64.b64encode(b"\x01" * 64).decode() + ":")
    assert refused(verify, request).code == "signature_invalid"


def test_clock_edges(verify: VerifyFixture) -> None:
    verify.now = NOW + 60  # exactly at expires: still valid
    verify.verify(signed(nonce="A" * 22))
    verify.now = NOW - 60  # created exactly skew seconds ahead: valid
    verify.verify(signed(nonce="B" * 22))
    verify.now = NOW + 61
    assert refused(verify, signed(nonce="C" * 22)).code == "signature_expired"


def test_public_authorities(verify: VerifyFixture) -> None:
    request = signed()
    assert refused(verify, request, public_authorities=("api.example",)).code == "authority_not_allowed"
    assert verify.verify(request, public_authorities=("strongroom.example",)).address == ADDRESS


def test_settings_choose_chains_and_window(verify: VerifyFixture) -> None:
    request = signed(chain_id=5, ttl=600)
    assert refused(verify, request, allowed_chain_ids=(1, 5)).code == "signature_expired"
    assert verify.verify(request, allowed_chain_ids=(1, 5), signature_max_window=600).chain_id == 5


def test_refusal_details_never_echo_the_signature(verify: VerifyFixture) -> None:
    request = custom_signed(params=_params(keyid=f"erc8128:1:{Account.from_key(OTHER_KEY).address.lower()}"))
    error = refused(verify, request)
    signature = request.headers["signature"].split("=:", 1)[1].rstrip(":")
    assert signature not in str(error) and signature not in error.detail


def test_ensure_grantee() -> None:
    signer = asyncio.run(VerifyFixture().verifier().verify(signed()))
    ensure_grantee(signer, ADDRESS.upper().replace("0X", "0x"))
    with pytest.raises(NotGrantee) as info:
        ensure_grantee(signer, "0x" + "00" * 20)
    assert info.value.status == 403 and info.value.code == "not_grantee"


def test_memory_nonces_behave_like_set_nx() -> None:
    store = MemoryNonces()
    assert asyncio.run(store.set("k", b"1", nx=True, ex=5)) is True
    assert asyncio.run(store.set("k", b"1", nx=True, ex=5)) is None


def test_content_digest_parse_cache_never_caches_an_outcome() -> None:
    """Parsed Content-Digest values are cached by their text; the body is still hashed and compared every time,
    and a value that does not parse is refused every time."""
    from shared.auth.base import content_digest
    from shared.auth.verifier import check_content_digest

    header = content_digest(b"")
    for _ in range(2):
        check_content_digest(header, b"")
        with pytest.raises(AuthError) as info:
            check_content_digest(header, b"x")
        assert info.value.code == "digest_mismatch"
    for _ in range(2):
        with pytest.raises(AuthError) as info:
            check_content_digest("sha-256=1", b"")
        assert info.value.code == "signature_malformed"
        with pytest.raises(AuthError) as info:
            check_content_digest("sha-256=(", b"")
        assert info.value.code == "signature_malformed"
        with pytest.raises(AuthError) as info:
            check_content_digest("sha-512=:AAAA:", b"")
        assert info.value.code == "digest_mismatch"


def test_high_s_twin_of_a_good_signature_is_the_same_nonce(verify: VerifyFixture) -> None:
    """High S is accepted as eth-account accepted it, and cannot be used to replay: nonces are keyed by
    (keyid, nonce), never by signature bytes."""
    from shared.auth.recovery import SECP256K1_ORDER

    good = custom_signed()
    raw = base64.b64decode(good.headers["signature"].split("=:", 1)[1].rstrip(":"))
    s = int.from_bytes(raw[32:64], "big")
    twin = raw[:32] + (SECP256K1_ORDER - s).to_bytes(32, "big") + bytes([55 - raw[64]])
    replay = with_headers(good, signature=f"eth=:{base64.b64encode(twin).decode()}:")
    assert verify.verify(good).address == ADDRESS
    assert refused(verify, replay).code == "nonce_replayed"
    assert VerifyFixture().verify(replay).address == ADDRESS  # on a fresh nonce store the twin itself verifies


# --- ERC-8128 section 3.1.1: what a Request-Bound signature must cover, and nothing more ---------------------


@pytest.mark.parametrize(
    ("method", "query", "body", "covered"),
    [
        ("GET", "?", b"", ("@authority", "@method", "@path")),  # no query, no body: the three are enough
        ("GET", "?after=12&limit=5", b"", ("@authority", "@method", "@path", "@query")),
        ("POST", "?", b'{"agent":"x"}', ("@authority", "@method", "@path", "content-digest")),
        ("POST", "?dry=1", b"{}", ("@authority", "@method", "@path", "@query", "content-digest")),
        ("POST", "?", b"", THREE),  # an empty body is no body
        ("GET", "?", b"", FIVE),  # what strongroom's own signers send: still accepted
    ],
)
def test_request_bound_signatures_are_accepted(
    verify: VerifyFixture, method: str, query: str, body: bytes, covered: tuple[str, ...]
) -> None:
    request = custom_signed(method=method, query=query, body=body, covered=covered)
    assert verify.verify(request).address == ADDRESS


def test_an_unsigned_content_digest_is_not_checked(verify: VerifyFixture) -> None:
    """Only a covered digest proves anything; an uncovered one (for an empty body) is ignored, not refused."""
    request = custom_signed(method="GET", body=b"", covered=THREE, digest="sha-256=:" + "A" * 43 + "=:")
    assert verify.verify(request).address == ADDRESS


def test_a_sha512_only_digest_is_enough(verify: VerifyFixture) -> None:
    body = b'{"agent":"x"}'
    digest = "sha-512=:" + base64.b64encode(hashlib.sha512(body).digest()).decode() + ":"
    assert verify.verify(custom_signed(body=body, digest=digest)).address == ADDRESS
    other = "sha-512=:" + base64.b64encode(hashlib.sha512(b"other").digest()).decode() + ":"
    assert refused(verify, custom_signed(body=body, digest=other)).code == "digest_mismatch"
    assert refused(verify, custom_signed(body=body, digest="md5=:AAAA:")).code == "digest_mismatch"


def test_any_printable_nonce_is_accepted(verify: VerifyFixture) -> None:
    """ERC-8128 leaves the nonce's form to the signer; it is still single-use."""
    request = custom_signed(params=_params(nonce="1"))
    assert verify.verify(request).address == ADDRESS
    assert refused(verify, request).code == "nonce_replayed"


def test_an_empty_query_signed_as_empty_is_not_rfc_9421(verify: VerifyFixture) -> None:
    """RFC 9421 section 2.2.7: ``@query`` without a query is ``?``; a base that says ``"@query": `` (what
    @slicekit/erc8128 0.2.0 signs when asked to cover a missing query) does not verify."""
    assert verify.verify(custom_signed(method="GET", body=b"", covered=(*THREE, "@query"))).address == ADDRESS
    empty = custom_signed(
        method="GET", body=b"", covered=(*THREE, "@query"), signed_query="", params=_params(nonce="n2")
    )
    assert refused(verify, empty).code == "signature_invalid"
