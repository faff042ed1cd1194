"""The signature base and digests against RFC 9421 / RFC 9530's own examples."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from http_sf.innerlist import ser_innerlist
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.auth.base import (
    AuthorityError,
    ComponentError,
    RequestParts,
    component_value,
    content_digest,
    normalize_authority,
    serialize_params,
    signature_base,
)
from shared.auth.signer import sign_request
from shared.errors import ValidationFailed

pytestmark = pytest.mark.unit

# RFC 9421 section 2 / appendix B.2: the test request.
RFC_REQUEST = RequestParts(
    method="POST",
    authority="example.com",
    path="/foo",
    query="?param=Value&Pet=dog",
    headers={
        "date": "Tue, 20 Apr 2021 02:07:55 GMT",
        "content-type": "application/json",
        "content-digest": "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+"
        "AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
        "content-length": "18",
    },
)
RFC_BODY = b'{"hello": "world"}'


def test_rfc9421_b26_ed25519_signature_verifies_over_our_base() -> None:
    """B.2.6 ships a real Ed25519 signature: it only verifies if our base is byte-for-byte the RFC's."""
    covered = ["date", "@method", "@path", "@authority", "content-type", "content-length"]
    base = signature_base(covered, {"created": 1618884473, "keyid": "test-key-ed25519"}, RFC_REQUEST)
    assert base == (
        '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
        '"@method": POST\n'
        '"@path": /foo\n'
        '"@authority": example.com\n'
        '"content-type": application/json\n'
        '"content-length": 18\n'
        '"@signature-params": ("date" "@method" "@path" "@authority" "content-type" "content-length")'
        ';created=1618884473;keyid="test-key-ed25519"'
    )
    public = Ed25519PublicKey.from_public_bytes(
        base64.urlsafe_b64decode("JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs=")
    )
    signature = base64.b64decode(
        "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw=="
    )
    public.verify(signature, base.encode())  # raises InvalidSignature on any difference


def test_rfc9421_b25_hmac_base() -> None:
    base = signature_base(
        ["date", "@authority", "content-type"],
        {"created": 1618884473, "keyid": "test-shared-secret"},
        RFC_REQUEST,
    )
    assert base.splitlines() == [
        '"date": Tue, 20 Apr 2021 02:07:55 GMT',
        '"@authority": example.com',
        '"content-type": application/json',
        '"@signature-params": ("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"',
    ]
    assert not base.endswith("\n")


def test_rfc9421_b21_minimal_params_with_nonce() -> None:
    params = {"created": 1618884473, "keyid": "test-key-rsa-pss", "nonce": "b3k2pp5k7z-50gnwp.yemd"}
    assert signature_base([], params, RFC_REQUEST) == (
        '"@signature-params": ();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd"'
    )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?param=value&foo=bar&baz=bat%2Dman", "?param=value&foo=bar&baz=bat%2Dman"),  # RFC 9421 2.2.7
        ("?queryString", "?queryString"),
        ("", "?"),
        ("?", "?"),
    ],
)
def test_query_component(query: str, expected: str) -> None:
    parts = RequestParts("GET", "example.com", "/path", query, {})
    assert component_value("@query", parts) == expected


def test_method_is_uppercased_and_header_values_trimmed() -> None:
    parts = RequestParts("post", "a", "/", "", {"x-thing": "  v  "})
    assert component_value("@method", parts) == "POST"
    assert component_value("x-thing", parts) == "v"


def test_unknown_components_are_refused() -> None:
    with pytest.raises(ComponentError):
        component_value("@target-uri", RFC_REQUEST)
    with pytest.raises(ComponentError):
        component_value("x-absent", RFC_REQUEST)


@pytest.mark.parametrize(
    ("host", "scheme", "expected"),
    [
        ("Example.COM", "https", "example.com"),
        ("example.com:443", "https", "example.com"),
        ("example.com:80", "http", "example.com"),
        ("example.com:443", "http", "example.com:443"),
        ("127.0.0.1:8080", "http", "127.0.0.1:8080"),
        ("[::1]:443", "https", "[::1]"),
        ("[::1]:8443", "https", "[::1]:8443"),
    ],
)
def test_authority_normalization(host: str, scheme: str, expected: str) -> None:
    assert normalize_authority(host, scheme) == expected


@pytest.mark.parametrize(
    "host",
    [
        "example.com:\u00b2",
        "example.com:\u0663",
        "example.com:8o",
        "[::1]:x",
        "[::1]80",
        "[::1",
        "example.com:" + "9" * 5000,
        "example.com:123456",
    ],
)
def test_malformed_ports_are_refused_not_crashed(host: str) -> None:
    """'²' passes str.isdigit() but not int(): a Host like that used to raise ValueError (a 500 in the API)."""
    with pytest.raises(AuthorityError):
        normalize_authority(host, "https")


def test_empty_port_means_the_default() -> None:
    assert normalize_authority("example.com:", "https") == "example.com"


def test_signer_refuses_a_url_with_a_malformed_port() -> None:
    with pytest.raises(ValidationFailed) as info:
        sign_request("0x" + "42" * 32, "GET", "https://example.com:\u00b2/api/v1/operations")
    assert info.value.code == "url_invalid"


def test_rfc9530_content_digest_example() -> None:
    assert content_digest(RFC_BODY) == "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    assert content_digest(b"") == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"


def test_params_serialize_in_given_order() -> None:
    params = {"created": 1, "expires": 2, "nonce": "n", "keyid": "k"}
    assert serialize_params(["@method"], params) == '("@method");created=1;expires=2;nonce="n";keyid="k"'


# --- @signature-params: the direct serializer must write exactly what http-sf writes ----------------------------

_sf_strings = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=24)  # includes " and \
_sf_keys = st.one_of(st.from_regex(r"[a-z*][a-z0-9_.*-]{0,8}", fullmatch=True), st.text(max_size=4))
_sf_values = st.one_of(
    st.integers(-(10**16), 10**16), _sf_strings, st.booleans(), st.binary(max_size=8), st.text(max_size=4)
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_sf_strings, st.text(max_size=6)), max_size=6), st.dictionaries(_sf_keys, _sf_values))
def test_serialize_params_is_http_sf(covered: list[str], params: dict[str, object]) -> None:
    """Same text for every input http-sf can serialize, and the same refusal (ValueError) for the rest."""
    try:
        expected: str | None = ser_innerlist(([(name, {}) for name in covered], dict(params)))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        expected = None
    if expected is None:
        with pytest.raises((ValueError, TypeError)):
            serialize_params(covered, params)
    else:
        assert serialize_params(covered, params) == expected


def test_serialize_params_erc8128_shape() -> None:
    params = {"created": 1, "expires": 61, "nonce": "AAECAwQFBgcICQoLDA0ODw", "keyid": "erc8128:1:0xab", "tag": "t"}
    assert serialize_params(("@method", "content-digest"), params) == (
        '("@method" "content-digest");created=1;expires=61;nonce="AAECAwQFBgcICQoLDA0ODw"'
        ';keyid="erc8128:1:0xab";tag="t"'
    )
