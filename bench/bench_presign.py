"""``S3ObjectStore.presign_get`` in process: botocore's ``generate_presigned_url`` against the learned SigV4 query
presigner (``shared.storage.presign``), on a client built as the API builds it (``_make_client``: s3v4, path
style, fixed keys). Presigning needs no network, so no server is started. Variants alternate; medians of ``--rounds``.

    .venv/bin/python bench/bench_presign.py [--calls 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace
from typing import Any

from shared.storage.s3 import S3ObjectStore, _make_client

KEY = "operations/privacy-audit_abcdefghijklmnopqrstuvwxyz/artifacts/0123456789abcdef/report.md.enc"


def per_call_us(store: S3ObjectStore, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        store.presign_get(KEY, ttl=300, filename="report.md")
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per round for the fast path")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    settings: Any = SimpleNamespace(
        s3_addressing_style="path", s3_region="us-east-1", s3_access_key_id="AKIDBENCH", s3_secret_access_key="x"
    )
    fast = S3ObjectStore(_make_client(settings, "http://127.0.0.1:8333"), "bench")
    slow = S3ObjectStore(_make_client(settings, "http://127.0.0.1:8333"), "bench")
    fast.presign_get(KEY, ttl=300)
    slow._presigner = None  # botocore's path, as before
    slow.presign_get(KEY, ttl=300)  # warm-up: endpoint ruleset, loaders
    assert fast._presigner is not None, "the fast path was not learned"
    boto, ours = [], []
    for _ in range(args.rounds):
        boto.append(per_call_us(slow, max(200, args.calls // 10)))
        ours.append(per_call_us(fast, args.calls))
    b, o = statistics.median(boto), statistics.median(ours)
    print(f"presign_get (with Content-Disposition), median of {args.rounds} rounds")
    print(f"botocore generate_presigned_url: {b:8.1f} us/call")
    print(f"learned SigV4 query presigner:   {o:8.1f} us/call   (x{b / o:.1f})")


if __name__ == "__main__":
    main()
