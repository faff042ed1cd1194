"""Upload and download throughput of S3ObjectStore against an embedded SeaweedFS, next to boto3's own
``upload_fileobj`` (s3transfer) in the same run: the ratio is the figure, absolute MB/s depend on the machine.

    .venv/bin/python bench/bench_storage.py [--mib 32] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from shared.devstack import S3Credentials, SeaweedServer
from shared.storage.s3 import MiB, S3ObjectStore


def _best_seconds(run: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=32, help="object size in MiB")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "payload.bin"
        path.write_bytes(os.urandom(args.mib * MiB))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        server = SeaweedServer(Path(tmp) / "weed", S3Credentials.generate(), log_path=Path(tmp) / "weed.log")
        server.start()
        try:
            store = S3ObjectStore(server.client(), "bench")
            store.ensure_bucket()
            size = args.mib * MiB

            def ours() -> None:
                with path.open("rb") as src:
                    store.put_file("bench/ours", src, size=size, sha256_hex=digest)

            def boto() -> None:
                with path.open("rb") as src:
                    store.client.upload_fileobj(src, "bench", "bench/boto")

            def download() -> None:
                for _ in store.open_range("bench/ours"):
                    pass

            rows = [
                ("put_file (checksummed, multipart)", _best_seconds(ours, args.repeat)),
                ("boto3 upload_fileobj (no checksum)", _best_seconds(boto, args.repeat)),
                ("open_range (whole object)", _best_seconds(download, args.repeat)),
            ]
        finally:
            server.stop()

    print(f"object {args.mib} MiB, best of {args.repeat}")
    for name, seconds in rows:
        print(f"  {name:38s} {args.mib / seconds:8.1f} MiB/s")
    print(f"  put_file / upload_fileobj ratio        {rows[1][1] / rows[0][1]:8.2f}")


if __name__ == "__main__":
    main()
