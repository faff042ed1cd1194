"""The SigV4 query presigner produces exactly botocore's presigned GET URLs (same frozen time, same bytes), and
the store falls back to botocore when it cannot (unusual signing, refreshable credentials)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.session import get_session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import layout
from shared.errors import ValidationFailed
from shared.storage import presign
from shared.storage.s3 import S3ObjectStore, content_disposition

pytestmark = pytest.mark.unit

ACCESS_KEY = "AKIDEXAMPLE0123456789"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEB4aDO/+tok=en//with+slashes=="
BUCKET = "strongroom-data"

# (addressing style, endpoint, region, session token, bucket): SeaweedFS/MinIO path style, a public endpoint with
# a port, behind a proxy path, or spelled with capitals and its default port; AWS virtual-hosted (regional and
# us-east-1's global host), and AWS "auto" (a dotted bucket goes path-style there).
CONFIGS = [
    ("path", "http://127.0.0.1:8333", "us-east-1", None, BUCKET),
    ("path", "https://s3.files.example.com:8443", "eu-west-3", TOKEN, BUCKET),
    ("path", "http://[::1]:9000", "us-east-1", None, BUCKET),
    ("virtual", None, "us-east-1", None, BUCKET),
    ("virtual", None, "eu-central-1", TOKEN, BUCKET),
    ("virtual", None, "ap-southeast-2", None, BUCKET),
    ("auto", None, "us-west-2", TOKEN, BUCKET),
    ("auto", "https://minio.example.com", "us-east-1", None, BUCKET),
    ("path", "https://proxy.example.com/s3", "eu-west-1", None, BUCKET),
    ("path", "http://S3.Example.COM:80", "us-east-1", None, BUCKET),
    ("auto", None, "eu-west-1", None, "strongroom.data.example"),
]


def _client(style: str, endpoint: str | None, region: str, token: str | None, **config: Any) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        aws_session_token=token,
        config=Config(signature_version=config.pop("signature_version", "s3v4"), s3={"addressing_style": style}),
    )


@pytest.fixture(scope="module")
def stores() -> list[S3ObjectStore]:
    built = [S3ObjectStore(_client(*config[:4]), config[4]) for config in CONFIGS]
    for store in built:
        store.presign_get("warm-up", ttl=60)  # learns the URL shape
    return built


@contextmanager
def frozen(moment: datetime) -> Iterator[None]:
    """botocore's clock and ours at the same instant (botocore reads a naive UTC datetime)."""
    naive = moment.astimezone(UTC).replace(tzinfo=None)
    with (
        mock.patch("botocore.auth.get_current_datetime", lambda: naive),
        mock.patch.object(presign, "_clock", lambda: moment.timestamp()),
    ):
        yield


def boto_url(store: S3ObjectStore, key: str, ttl: int, filename: str | None, content_type: str | None) -> str:
    params: dict[str, Any] = {"Bucket": store.bucket, "Key": key}
    if filename is not None:
        params["ResponseContentDisposition"] = content_disposition(filename)
    if content_type is not None:
        params["ResponseContentType"] = content_type
    url: str = store.presign_client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl)
    return url


def _valid_name(name: str) -> bool:
    try:
        layout.validate_artifact_name(name)
    except ValidationFailed:
        return False
    return True


_TEXT = st.characters(exclude_categories=("Cs",))  # botocore cannot encode lone surrogates either
_NAMES = st.text(_TEXT | st.sampled_from(" +~%&=?#;/\\\"'é中😀"), min_size=1, max_size=40).filter(_valid_name)
_LAYOUT_KEYS = st.builds(
    layout.artifact_key,
    st.just("privacy-audit_" + "a" * 26),
    _NAMES,
    st.none() | st.just("0123456789abcdef"),
)
_ANY_KEYS = st.text(_TEXT, min_size=1, max_size=80)
_MOMENTS = st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC))
_CONTENT_TYPES = st.none() | st.sampled_from(["text/markdown", "application/json; charset=utf-8"]) | st.text(_TEXT)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=_LAYOUT_KEYS | _ANY_KEYS,
    filename=st.none() | st.text(_TEXT, max_size=40),
    content_type=_CONTENT_TYPES,
    ttl=st.integers(1, 7 * 24 * 3600),
    moment=_MOMENTS,
)
def test_urls_are_byte_for_byte_botocores(
    stores: list[S3ObjectStore],
    key: str,
    filename: str | None,
    content_type: str | None,
    ttl: int,
    moment: datetime,
) -> None:
    for store in stores:
        with frozen(moment):
            ours = store.presign_get(key, ttl=ttl, filename=filename, content_type=content_type)
            theirs = boto_url(store, key, ttl, filename, content_type)
        assert ours.url == theirs
        assert ours.expires_at == moment.replace(microsecond=0) + timedelta(seconds=ttl)


def test_every_configuration_takes_the_fast_path(stores: list[S3ObjectStore]) -> None:
    """Otherwise the equality above would compare botocore with itself."""
    for store in stores:
        assert isinstance(store._presigner, presign.QueryPresigner)


def test_learned_shapes(stores: list[S3ObjectStore]) -> None:
    bases = [repr(store._presigner) for store in stores]
    assert "base_url='http://127.0.0.1:8333/strongroom-data/', region='us-east-1'" in bases[0]
    assert "base_url='https://s3.files.example.com:8443/strongroom-data/', region='eu-west-3'" in bases[1]
    assert "base_url='https://strongroom-data.s3.amazonaws.com/', region='us-east-1'" in bases[3]
    assert "base_url='https://strongroom-data.s3.eu-central-1.amazonaws.com/', region='eu-central-1'" in bases[4]
    assert "base_url='https://proxy.example.com/s3/strongroom-data/'" in bases[8]
    assert "base_url='https://s3.eu-west-1.amazonaws.com/strongroom.data.example/'" in bases[10]


def test_session_token_is_signed_into_the_url(stores: list[S3ObjectStore]) -> None:
    with_token = parse_qs(urlsplit(stores[1].presign_get("k", ttl=60).url).query)
    without = parse_qs(urlsplit(stores[0].presign_get("k", ttl=60).url).query)
    assert with_token["X-Amz-Security-Token"] == [TOKEN]
    assert "X-Amz-Security-Token" not in without


def test_signing_key_follows_the_utc_day(stores: list[S3ObjectStore]) -> None:
    """One cached key per day: URLs on either side of midnight each match botocore's."""
    store = stores[4]
    for moment in (
        datetime(2030, 5, 1, 23, 59, 59, tzinfo=UTC),
        datetime(2030, 5, 2, 0, 0, 0, tzinfo=UTC),
        datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC),
    ):
        with frozen(moment):
            assert store.presign_get("a/b.enc", ttl=300).url == boto_url(store, "a/b.enc", 300, None, None)


def test_expiry_is_the_ttl_from_the_signing_second(stores: list[S3ObjectStore]) -> None:
    moment = datetime(2031, 2, 3, 4, 5, 6, 789_000, tzinfo=UTC)
    with frozen(moment):
        presigned = stores[0].presign_get("a/b.enc", ttl=321, filename="b.md")
    query = parse_qs(urlsplit(presigned.url).query)
    assert query["X-Amz-Expires"] == ["321"]
    assert query["X-Amz-Date"] == ["20310203T040506Z"]
    assert presigned.expires_at == datetime(2031, 2, 3, 4, 10, 27, tzinfo=UTC)


def test_secrets_stay_out_of_the_presigners_repr(stores: list[S3ObjectStore]) -> None:
    text = repr(stores[1]._presigner)
    assert SECRET_KEY not in text and TOKEN not in text and "AWS4" not in text


def test_unrecognised_signing_falls_back_to_botocore() -> None:
    """A client botocore presigns with another scheme (SigV2 here) is never imitated: its URLs stay botocore's."""
    store = S3ObjectStore(_client("path", "http://127.0.0.1:8333", "us-east-1", None, signature_version="s3"), BUCKET)
    url = store.presign_get("a/b.enc", ttl=60, filename="b.md").url
    assert store._presigner is None
    assert "AWSAccessKeyId=" in url and "X-Amz-Signature" not in url


def test_refreshable_credentials_keep_botocores_path() -> None:
    def fetch() -> dict[str, str]:
        return {"access_key": "a", "secret_key": "b", "token": "c", "expiry_time": "2099-01-01T00:00:00Z"}

    session = get_session()
    session._credentials = RefreshableCredentials.create_from_metadata(fetch(), fetch, "test")
    client = session.create_client(
        "s3", endpoint_url="http://127.0.0.1:8333", region_name="us-east-1", config=Config(signature_version="s3v4")
    )
    store = S3ObjectStore(client, BUCKET)
    url = store.presign_get("a/b.enc", ttl=60).url
    assert store._presigner is None
    assert "X-Amz-Signature=" in url


def test_a_probe_that_cannot_be_reproduced_is_refused() -> None:
    """``learn`` compares its own URL with botocore's; any difference (here: another secret) means no presigner."""
    client = _client("path", "http://127.0.0.1:8333", "us-east-1", None)
    real = client._request_signer._credentials
    wrong = mock.Mock(access_key=real.access_key, secret_key="not-the-secret", token=None)
    assert presign.learn(client, BUCKET, wrong) is None
    assert presign.learn(client, BUCKET, real) is not None
