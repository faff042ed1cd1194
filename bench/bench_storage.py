"""Upload and download throughput of S3ObjectStore against an embedded SeaweedFS, next to boto3's own
``upload_fileobj`` (s3transfer) in the same run: the ratio is the figure, absolute MB/s depend on the machine.

The store is built by ``S3ObjectStore.from_settings``, so the client configuration (connection pool, retries,
payload signing) is the one production uses. Each figure is the median of ``--repeat`` runs; every run is
printed too, so a noisy neighbour on a shared machine shows as spread rather than hiding in a best-of; variants
run interleaved, round by round.

A second ``put_file`` row sends one part at a time (``max_concurrency=1``), so the gain from concurrent parts is
measured in the same run, against the same server, rather than against a figure from another day.

    .venv/bin/python bench/bench_storage.py [--mib 32 100] [--repeat 3] [--concurrency 4] [--part-mib 8]
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

from shared.settings import Settings
from shared.storage.s3 import MULTIPART_THRESHOLD, PART_CONCURRENCY, PART_SIZE, MiB, S3ObjectStore
from strongroom.dev.servers import S3Credentials, SeaweedServer

BUCKET = "bench"


def _interleaved(runs: list[tuple[str, Callable[[], None]]], repeat: int) -> list[tuple[str, list[float]]]:
    """Each round runs every variant once, so a server stall (the dev SeaweedFS grows a volume every 64 MB
    written) or a busy neighbour lands on any row, not always on the one that happened to run then."""
    times: dict[str, list[float]] = {name: [] for name, _ in runs}
    for _ in range(repeat):
        for name, run in runs:
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return [(name, times[name]) for name, _ in runs]


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


def _variant(store: S3ObjectStore, *, concurrency: int, part_size: int) -> S3ObjectStore:
    """The same client (and so the same connection pool) with other multipart knobs."""
    threshold = max(MULTIPART_THRESHOLD, part_size)
    return S3ObjectStore(
        store.client, store.bucket, multipart_threshold=threshold, part_size=part_size, max_concurrency=concurrency
    )


def _bench_size(
    store: S3ObjectStore, sequential: S3ObjectStore, tmp: Path, mib: int, repeat: int
) -> list[tuple[str, list[float]]]:
    size = mib * MiB
    path = tmp / f"payload-{mib}.bin"
    digest = _write_payload(path, size)

    def ours() -> None:
        with path.open("rb") as src:
            store.put_file("bench/ours", src, size=size, sha256_hex=digest)

    def one_at_a_time() -> None:
        with path.open("rb") as src:
            sequential.put_file("bench/sequential", src, size=size, sha256_hex=digest)

    def boto() -> None:
        with path.open("rb") as src:
            store.client.upload_fileobj(src, BUCKET, "bench/boto")

    def download() -> None:
        for _ in store.open_range("bench/ours"):
            pass

    ours()  # warm-up, unmeasured: the first writes to a fresh server allocate its volumes
    rows = _interleaved(
        [
            (f"put_file ({store.max_concurrency} parts in flight)", ours),
            ("put_file (one part at a time)", one_at_a_time),
            ("boto3 upload_fileobj (no checksum)", boto),
            ("open_range (whole object)", download),
        ],
        repeat,
    )
    path.unlink()
    return rows


def _report(mib: int, part_mib: int, repeat: int, rows: list[tuple[str, list[float]]]) -> None:
    print(f"object {mib} MiB, {part_mib} MiB parts, median of {repeat} (each run in brackets)")
    for name, times in rows:
        runs = " ".join(f"{mib / t:.0f}" for t in times)
        print(f"  {name:38s} {mib / statistics.median(times):8.1f} MiB/s   [{runs}]")
    ours, sequential, boto = (statistics.median(times) for _, times in rows[:3])
    print(f"  put_file / upload_fileobj ratio        {boto / ours:8.2f}")
    print(f"  concurrent / one-at-a-time speed-up    {sequential / ours:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, nargs="+", default=[32], help="object sizes in MiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=PART_CONCURRENCY, help="parts in flight")
    parser.add_argument("--part-mib", type=int, default=PART_SIZE // MiB, help="multipart part size in MiB")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        server = SeaweedServer(tmp / "weed", S3Credentials.generate(), log_path=tmp / "weed.log")
        server.start()
        try:
            base = _store_for(server)
            base.ensure_bucket()
            part_size = args.part_mib * MiB
            store = _variant(base, concurrency=args.concurrency, part_size=part_size)
            sequential = _variant(base, concurrency=1, part_size=part_size)
            results = [(mib, _bench_size(store, sequential, tmp, mib, args.repeat)) for mib in args.mib]
        finally:
            server.stop()

    for mib, rows in results:
        _report(mib, args.part_mib, args.repeat, rows)


if __name__ == "__main__":
    main()
