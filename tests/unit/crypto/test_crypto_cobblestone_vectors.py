"""Wycheproof vectors for Cobblestone-256 and HKDF-SHA-512, through both AES-GCM backends.

Applied as Wycheproof's doc/c2sp_chunked_encryption.md says: whole decryption, streaming decryption (with
PartialPlaintext rules), random access, final-chunk length authentication, and encryption with an injected
salt.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from typing import Any

import pytest
from crypto_vectors import cobblestone_ct, cobblestone_tests, ids, vector_tests
from cryptography.exceptions import InvalidKey

from shared.crypto import cobblestone
from shared.crypto.aead import BACKENDS, AeadFactory, nacl_aes_gcm_available
from shared.errors import IntegrityError

pytestmark = pytest.mark.unit

VECTORS = cobblestone_tests()
VALID = [t for t in VECTORS if t["result"] == "valid"]
INVALID = [t for t in VECTORS if t["result"] == "invalid"]


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> AeadFactory:
    if request.param == "pynacl" and not nacl_aes_gcm_available():
        pytest.skip("libsodium AES-256-GCM needs AES-NI / ARMv8 crypto extensions")
    return BACKENDS[request.param]


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _fetcher(ct: bytes) -> Any:
    def fetch(first: int, last: int) -> Iterator[bytes]:
        assert 0 <= first <= last < len(ct)
        return _pieces(ct[first : last + 1], 5000)

    return fetch


def _inputs(test: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    return bytes.fromhex(test["key"]), bytes.fromhex(test["ctx"]), cobblestone_ct(test)


def test_vector_file_has_the_expected_shape() -> None:
    assert len(VECTORS) == 35 and len(VALID) == 10


@pytest.mark.parametrize("test", VALID, ids=ids(VALID))
@pytest.mark.parametrize("piece_size", [len, lambda ct: 1000, lambda ct: 16400])
def test_valid_streaming_decrypt(test: dict[str, Any], piece_size: Any, backend: AeadFactory) -> None:
    key, ctx, ct = _inputs(test)
    pieces = _pieces(ct, max(piece_size(ct), 1)) if ct else iter([b""])
    digest, size = hashlib.sha512(), 0
    for plaintext in cobblestone.decrypt_stream(key, ctx, pieces, backend=backend):
        digest.update(plaintext)
        size += len(plaintext)
    assert size == test["msgLength"]
    assert digest.hexdigest() == test["msgSha512"]
    assert cobblestone.plaintext_size(len(ct)) == test["msgLength"]
    assert cobblestone.ciphertext_size(test["msgLength"]) == len(ct)


@pytest.mark.parametrize("test", VALID, ids=ids(VALID))
@pytest.mark.parametrize("piece_size", [len, lambda ct: 1000, lambda ct: 16400, lambda ct: 65536])
def test_valid_push_decrypt(test: dict[str, Any], piece_size: Any, backend: AeadFactory) -> None:
    """The Decryptor (the SDK download's path): the same plaintext, whatever the pieces."""
    key, ctx, ct = _inputs(test)
    decryptor = cobblestone.Decryptor(key, ctx, backend=backend)
    digest, size = hashlib.sha512(), 0
    for piece in _pieces(ct, max(piece_size(ct), 1)):
        plaintext = decryptor.update(piece)
        digest.update(plaintext)
        size += len(plaintext)
    final = decryptor.finalize()
    digest.update(final)
    assert size + len(final) == test["msgLength"]
    assert digest.hexdigest() == test["msgSha512"]


@pytest.mark.parametrize("test", VALID, ids=ids(VALID))
def test_valid_random_access_and_length(test: dict[str, Any], backend: AeadFactory) -> None:
    key, ctx, ct = _inputs(test)
    assert cobblestone.authenticate_length(key, ctx, len(ct), _fetcher(ct), backend=backend) == test["msgLength"]
    if test["msgLength"] == 0:
        return
    whole = b"".join(
        cobblestone.decrypt_range(key, ctx, 0, test["msgLength"] - 1, len(ct), _fetcher(ct), backend=backend)
    )
    assert hashlib.sha512(whole).hexdigest() == test["msgSha512"]


@pytest.mark.parametrize("test", VALID, ids=ids(VALID))
def test_encrypt_with_the_vector_salt_reproduces_ct(test: dict[str, Any], backend: AeadFactory) -> None:
    key, ctx, ct = _inputs(test)
    message = b"".join(cobblestone.decrypt_stream(key, ctx, [ct], backend=backend))
    again = b"".join(cobblestone.encrypt_stream(key, ctx, _pieces(message, 7000), backend=backend, salt=ct[:24]))
    assert hmac.compare_digest(again, ct)


@pytest.mark.parametrize("test", INVALID, ids=ids(INVALID))
def test_invalid_streaming_decrypt_fails_and_keeps_failing(test: dict[str, Any], backend: AeadFactory) -> None:
    key, ctx, ct = _inputs(test)
    if "InvalidKeySize" in test["flags"]:
        with pytest.raises(IntegrityError):  # refused when the key is provided, before any read
            cobblestone.decrypt_stream(key, ctx, [ct], backend=backend)
        return
    stream = cobblestone.decrypt_stream(key, ctx, _pieces(ct, 3000) if ct else iter([]), backend=backend)
    produced = bytearray()
    with pytest.raises(IntegrityError):
        for plaintext in stream:
            produced += plaintext
    prefix_length = test.get("msgLength", 0) if "PartialPlaintext" in test["flags"] else 0
    assert len(produced) <= prefix_length
    if produced and len(produced) == prefix_length:
        assert hashlib.sha512(produced).hexdigest() == test["msgSha512"]
    for _ in range(2):  # sticky: never a clean end of message after a failure
        with pytest.raises(IntegrityError):
            next(stream)


@pytest.mark.parametrize("test", INVALID, ids=ids(INVALID))
@pytest.mark.parametrize("piece_size", [3000, 65536])
def test_invalid_push_decrypt_fails_and_keeps_failing(
    test: dict[str, Any], piece_size: int, backend: AeadFactory
) -> None:
    key, ctx, ct = _inputs(test)
    if "InvalidKeySize" in test["flags"]:
        with pytest.raises(IntegrityError):
            cobblestone.Decryptor(key, ctx, backend=backend)
        return
    decryptor = cobblestone.Decryptor(key, ctx, backend=backend)
    produced = bytearray()
    with pytest.raises(IntegrityError):
        for piece in _pieces(ct, piece_size):
            produced += decryptor.update(piece)
        decryptor.finalize()
    prefix_length = test.get("msgLength", 0) if "PartialPlaintext" in test["flags"] else 0
    assert len(produced) <= prefix_length
    if produced and len(produced) == prefix_length:
        assert hashlib.sha512(produced).hexdigest() == test["msgSha512"]
    for _ in range(2):  # sticky: never a clean end of message after a failure
        with pytest.raises(IntegrityError):
            decryptor.finalize()


@pytest.mark.parametrize("test", INVALID, ids=ids(INVALID))
def test_invalid_random_access_whole_read_fails(test: dict[str, Any], backend: AeadFactory) -> None:
    key, ctx, ct = _inputs(test)
    with pytest.raises(IntegrityError):
        size = cobblestone.plaintext_size(len(ct))
        if size == 0:
            cobblestone.authenticate_length(key, ctx, len(ct), _fetcher(ct), backend=backend)
        else:
            b"".join(cobblestone.decrypt_range(key, ctx, 0, size - 1, len(ct), _fetcher(ct), backend=backend))


LENGTH_FAILS = [t for t in INVALID if "ValidFinalChunk" not in t["flags"]]


@pytest.mark.parametrize("test", LENGTH_FAILS, ids=ids(LENGTH_FAILS))
def test_invalid_length_authentication_fails(test: dict[str, Any], backend: AeadFactory) -> None:
    key, ctx, ct = _inputs(test)
    with pytest.raises(IntegrityError):
        cobblestone.authenticate_length(key, ctx, len(ct), _fetcher(ct), backend=backend)


HKDF = vector_tests("wycheproof_hkdf_sha512_test.json")


@pytest.mark.parametrize("test", HKDF, ids=ids(HKDF))
def test_hkdf_sha512_expand(test: dict[str, Any]) -> None:
    # Wycheproof tests full HKDF: Extract by hand (RFC 5869: HMAC(salt or zeros, ikm)), then Expand with ours.
    salt = bytes.fromhex(test["salt"]) or bytes(64)
    prk = hmac.new(salt, bytes.fromhex(test["ikm"]), hashlib.sha512).digest()
    info = bytes.fromhex(test["info"])
    if test["result"] == "invalid":
        with pytest.raises((ValueError, InvalidKey)):
            cobblestone.hkdf_expand_sha512(prk, info, test["size"])
        return
    assert cobblestone.hkdf_expand_sha512(prk, info, test["size"]).hex() == test["okm"]


def test_open_into_matches_open_and_wipes_on_failure(backend: AeadFactory) -> None:
    """``Aead.open_into`` (the Decryptor's full chunks): the same bytes as ``open``; a bad tag raises
    IntegrityError and leaves zeros, never unauthenticated plaintext; a wrongly sized buffer is refused."""
    key, nonce = bytes(range(32)), bytes(12)
    aead = backend(key)
    sealed = aead.seal(nonce, b"attack at dawn" * 100)
    out = bytearray(len(sealed) - 16)
    aead.open_into(nonce, memoryview(sealed), memoryview(out))
    assert bytes(out) == aead.open(nonce, sealed)
    tampered = bytearray(sealed)
    tampered[3] ^= 1
    with pytest.raises(IntegrityError):
        aead.open_into(nonce, memoryview(tampered), memoryview(out))
    assert out == bytes(len(out))
    with pytest.raises(ValueError):
        aead.open_into(nonce, sealed, memoryview(out)[:-1])
