"""The shared ObjectStore contract against the in-memory backend, plus what only it offers."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.errors import StorageError, Unavailable
from shared.storage import ObjectStore
from shared.storage.memory import MemoryObjectStore
from tests.unit.storage.contract import ObjectStoreContract

pytestmark = pytest.mark.unit


class TestMemoryContract(ObjectStoreContract):
    @pytest.fixture
    def store(self) -> MemoryObjectStore:
        return MemoryObjectStore("unit")

    @pytest.fixture
    def prefix(self) -> str:
        return f"t-{secrets.token_hex(4)}/"

    @pytest.fixture
    def missing_bucket_store(self) -> MemoryObjectStore:
        return MemoryObjectStore("unit", bucket_exists=False)


def test_satisfies_the_protocol() -> None:
    store: ObjectStore = MemoryObjectStore()
    assert store.bucket == "strongroom"


def test_presign_is_a_memory_url_carrying_the_response_overrides() -> None:
    store = MemoryObjectStore("b")
    url = store.presign_get("operations/x/a b.enc", ttl=60, filename="naïve.md", content_type="text/markdown")
    parts = urlsplit(url.url)
    assert (parts.scheme, parts.netloc, parts.path) == ("memory", "b", "/operations/x/a%20b.enc")
    query = parse_qs(parts.query)
    assert query["response-content-type"] == ["text/markdown"]
    assert query["response-content-disposition"] == [
        "attachment; filename=\"na_ve.md\"; filename*=UTF-8''na%C3%AFve.md"
    ]
    assert int(query["expires"][0]) == int(url.expires_at.timestamp())


def test_ensure_bucket_records_configuration() -> None:
    store = MemoryObjectStore(bucket_exists=False)
    store.ensure_bucket(cors_origins=("https://app.example",), expire_after_days=9)
    assert (store.cors_origins, store.expire_after_days) == (("https://app.example",), 9)


def test_switched_off_store_is_unavailable() -> None:
    store = MemoryObjectStore()
    store.available = False
    with pytest.raises(Unavailable):
        store.ping()
    with pytest.raises(Unavailable):
        store.put_bytes("k", b"v")
    assert not isinstance(Unavailable(), StorageError)  # callers retry the one, report the other
