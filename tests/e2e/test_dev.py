"""`strongroom dev` end to end: ready with nothing configured, a real operation round trip, Ctrl-C leaves no
orphans (nor SeaweedFS sockets in /tmp), and a restart on the same data dir finds every operation, artifact and
object stored before."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from strongroom.client.identity import generate_identity
from strongroom.client.sdk import StrongroomClient
from strongroom.dev import servers
from strongroom.dev.servers import S3Credentials
from tests.e2e.devstack import Dev, clean_env
from tests.helpers.ports import free_port

pytestmark = pytest.mark.e2e


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def dev_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def s3_client(data_dir: Path) -> Any:
    """A client for dev's embedded S3, from the credentials and ports dev persisted in its data dir."""
    creds = json.loads((data_dir / "s3-credentials.json").read_text())
    ports = json.loads((data_dir / "seaweedfs" / "ports.json").read_text())
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    return servers.s3_client(endpoint, S3Credentials(creds["access_key"], creds["secret_key"]))


def test_dev_round_trip_restart_and_clean_stop(dev_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    dev = Dev(dev_dir, port, tmp_path / "dev-1.log").start()
    try:
        for secret in ("keyring.json", "s3-credentials.json", "connection.json"):
            assert stat.S_IMODE((dev_dir / secret).stat().st_mode) == 0o600

        # API -> Redis -> worker -> S3 -> API, with a real signed privacy-audit operation.
        identity = generate_identity()
        with StrongroomClient(dev.url, identity) as client:
            created = client.create("privacy-audit", {"text": "contact: alice@example.com"})
            done = client.wait(created.id, timeout=120, initial_interval=0.2)
            assert done.status == "succeeded", done
            names = [a.name for a in client.artifacts(created.id).artifacts]
            assert names
            first = client.download(created.id, names[0], tmp_path / "first")
        report = (tmp_path / "first").read_bytes()
        assert report and b"alice@example.com" not in report  # the agent masks what it found
        del first

        bucket = "strongroom"
        s3 = s3_client(dev_dir)
        s3.put_object(Bucket=bucket, Key="e2e/marker", Body=b"still here")

        children = dev.descendants()
        assert len(children) >= 5  # valkey, weed, api, worker, beat (and their helpers)
        took = dev.interrupt()
        assert took < 10.5
        assert dev.process.returncode() == 0, dev.process.logs()[-3000:]
        survivors = [pid for pid in children if alive(pid)]
        assert survivors == [], f"orphans after Ctrl-C: {survivors}"
        assert not (dev_dir / "connection.json").exists()  # admin commands must not find a stopped stack
        ports = set(json.loads((dev_dir / "seaweedfs" / "ports.json").read_text()).values())
        left = [p for p in Path("/tmp").glob("seaweedfs-*.sock") if int(p.stem.rsplit("-", 1)[1]) in ports]
        assert left == [], f"SeaweedFS sockets left in /tmp: {left}"
    finally:
        dev.process.stop()

    again = Dev(dev_dir, port, tmp_path / "dev-2.log").start()
    try:
        with StrongroomClient(again.url, identity) as client:
            assert client.get(created.id).status == "succeeded"
            client.download(created.id, names[0], tmp_path / "second")
        assert (tmp_path / "second").read_bytes() == report
        body = s3_client(dev_dir).get_object(Bucket=bucket, Key="e2e/marker")["Body"].read()
        assert body == b"still here"
        again.interrupt()
    finally:
        again.process.stop()


def refused_dev(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `strongroom dev` with only ``env`` configured; it must refuse before starting anything."""
    result = subprocess.run(
        [sys.executable, "-m", "strongroom", "dev", "--data-dir", str(tmp_path / "d"), "--port", str(free_port())],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    return result


def test_dev_with_a_bad_setting_exits_with_one_line(tmp_path: Path) -> None:
    result = refused_dev(tmp_path, STRONGROOM_PRESIGN_TTL="soon")
    assert "STRONGROOM_PRESIGN_TTL" in result.stderr
    assert not (tmp_path / "d" / "valkey").exists()  # nothing was started


def test_dev_against_an_external_s3_needs_a_real_keyring(tmp_path: Path) -> None:
    """A keyring generated into the data dir would seal records in a shared bucket that only this machine can read."""
    result = refused_dev(tmp_path, STRONGROOM_S3_ENDPOINT_URL="http://127.0.0.1:9")
    assert "STRONGROOM_KEYRING" in result.stderr
    assert not (tmp_path / "d" / "keyring.json").exists()
