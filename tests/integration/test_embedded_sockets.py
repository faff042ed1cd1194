"""The embedded SeaweedFS leaves no Unix socket of its ports in /tmp once stopped.

``weed mini`` puts its filer socket in /tmp unless told otherwise, and its gRPC sockets there always
(``/tmp/seaweedfs-<service>-grpc-<port>.sock``, no option); at exit it removes some of them, not all (none when
killed), so they piled up across ``strongroom dev`` runs and test sessions.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from strongroom.dev.servers import S3Credentials, SeaweedServer

pytestmark = pytest.mark.integration


def _ours(server: SeaweedServer) -> list[Path]:
    ports = set(server.ports.values())
    return [p for p in Path("/tmp").glob("seaweedfs-*.sock") if int(p.stem.rsplit("-", 1)[1]) in ports]


@pytest.mark.parametrize("end", ["stop", "kill"])
def test_no_socket_of_its_ports_stays_in_tmp(tmp_path: Path, end: str) -> None:
    server = SeaweedServer(tmp_path / "seaweedfs", S3Credentials.generate())
    server.start()
    try:
        running = _ours(server)
        filer_with_the_data = (tmp_path / "seaweedfs" / "filer.sock").exists()
    finally:
        getattr(server, end)()  # stop: weed removes some of its sockets itself, not all; kill: weed removes none
    assert _ours(server) == []
    assert filer_with_the_data
    assert all("-grpc-" in p.name for p in running), running


def test_a_data_dir_too_long_for_a_socket_address_falls_back_to_tmp(tmp_path: Path) -> None:
    server = SeaweedServer(tmp_path / ("d" * 120), S3Credentials.generate())
    assert server._local_socket("filer") == Path(f"/tmp/seaweedfs-filer-{server.ports['filer']}.sock")
    assert server._local_socket("filer") in server.tmp_sockets()  # so stop removes it
