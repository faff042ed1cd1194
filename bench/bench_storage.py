"""Upload and download throughput of S3ObjectStore against an embedded SeaweedFS, next to boto3's own
``upload_fileobj`` (s3transfer) in the same run: the ratio is the figure, absolute MB/s depend on the machine.

The store is built by ``S3ObjectStore.from_settings``, so the client configuration (connection pool, retries,
payload signing) is the one production uses. Each figure is the median of ``--repeat`` runs; every run is
printed too, so a noisy neighbour on a shared machine shows as spread rather than hiding in a best-of.

    .venv/bin/python bench/bench_storage.py [--mib 32 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from shared.devstack import S3Credentials, SeaweedServer
from shared.settings import Settings
from shared.storage.s3 import MiB, S3ObjectStore

BUCKET = "bench"


def _timings(run: Callable[[], None], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def _write_payload(path: Path, size: int) -> str:
    """Random bytes written in 1 MiB blocks (the payload is never held whole), returning its SHA-256."""
    hasher = hashlib.sha256()
    with path.open("wb") as out:
        for offset in range(0, size, MiB):
            block = os.urandom(min(MiB, size - offset))
            hasher.update(block)
            out.write(block)
    return hasher.hexdigest()


def _store_for(server: SeaweedServer) -> S3ObjectStore:
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://127.0.0.1:1/0",  # required by Settings, never contacted here
            "STRONGROOM_S3_ENDPOINT_URL": server.endpoint_url,
            "STRONGROOM_S3_BUCKET": BUCKET,
            "STRONGROOM_S3_ADDRESSING_STYLE": "path",
            "AWS_REGION": server.region,
            "AWS_ACCESS_KEY_ID": server.credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": server.credentials.secret_key,
        }
    )
    return S3ObjectStore.from_settings(settings)


def _bench_size(store: S3ObjectStore, tmp: Path, mib: int, repeat: int) -> list[tuple[str, list[float]]]:
    size = mib * MiB
    path = tmp / f"payload-{mib}.bin"
    digest = _write_payload(path, size)

    def ours() -> None:
        with path.open("rb") as src:
            store.put_file("bench/ours", src, size=size, sha256_hex=digest)

    def boto() -> None:
        with path.open("rb") as src:
            store.client.upload_fileobj(src, BUCKET, "bench/boto")

    def download() -> None:
        for _ in store.open_range("bench/ours"):
            pass

    rows = [
        ("put_file (checksummed, multipart)", _timings(ours, repeat)),
        ("boto3 upload_fileobj (no checksum)", _timings(boto, repeat)),
        ("open_range (whole object)", _timings(download, repeat)),
    ]
    path.unlink()
    return rows


def _report(mib: int, repeat: int, rows: list[tuple[str, list[float]]]) -> None:
    print(f"object {mib} MiB, median of {repeat} (each run in brackets)")
    for name, times in rows:
        runs = " ".join(f"{mib / t:.0f}" for t in times)
        print(f"  {name:38s} {mib / statistics.median(times):8.1f} MiB/s   [{runs}]")
    ratio = statistics.median(rows[1][1]) / statistics.median(rows[0][1])
    print(f"  put_file / upload_fileobj ratio        {ratio:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, nargs="+", default=[32], help="object sizes in MiB")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        server = SeaweedServer(tmp / "weed", S3Credentials.generate(), log_path=tmp / "weed.log")
        server.start()
        try:
            store = _store_for(server)
            store.ensure_bucket()
            results = [(mib, _bench_size(store, tmp, mib, args.repeat)) for mib in args.mib]
        finally:
            server.stop()

    for mib, rows in results:
        _report(mib, args.repeat, rows)


if __name__ == "__main__":
    main()
