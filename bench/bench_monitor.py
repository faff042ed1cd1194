"""S3 requests per resource-monitor pass against an embedded SeaweedFS and Valkey: the count must follow the
operations that changed, not the ones stored (issue 14, goal 7).

Operations (record, input, index, expiry marker and one artifact object each) are written directly through the
store. The first pass builds the monitor's ledger with one full walk: that pass reads what every pass read before
the running totals (a LIST of ``operations/`` and one record read per operation), so its count is the "before"
figure. Then, for each size in ``--sizes``, more operations are stored, one pass takes them in, ``--changed``
operations are created, and the pass after that is counted. Requests are counted at the HTTP layer (botocore's
``before-send``); the record cache is per process, so the counted pass runs on a fresh ``OperationStore``
(nothing cached) to be fair to the old walk.

    .venv/bin/python bench/bench_monitor.py [--sizes 1000 5000] [--changed 10] [--threads 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench_cleanup import RequestCounter, _services  # run as bench/bench_monitor.py: its folder is on the path

from shared import layout
from shared.logging import configure as configure_logging
from shared.models import Encryption, OperationRecord, StoredArtifact, WrappedKey
from shared.records import OperationStore
from strongroom.dev.servers import S3Credentials, SeaweedServer, ValkeyServer
from worker_service.pipeline import monitor
from worker_service.services import Services

BUCKET = "bench-monitor"
NOW = datetime.now(UTC)
WRAPPED = WrappedKey(version="x25519-xsalsa20-poly1305", nonce="bm9uY2U=", ephemPublicKey="ZXBo", ciphertext="Y3Q=")


def _record(status: str = "succeeded") -> OperationRecord:
    digest = "sha256:" + "0" * 64
    item = StoredArtifact(
        name="report.md",
        size=1000,
        content_type="text/markdown",
        created_at=NOW,
        checksum=digest,
        ciphertext_checksum=digest,
        ciphertext_size=1072,
        encryption=Encryption(wrapped_key=WRAPPED),
        run_id=layout.new_run_id(),
    )
    return OperationRecord(
        id=layout.new_operation_id("privacy-audit"),
        agent="privacy-audit",
        grantee="0x" + "ab" * 20,
        encryption_public_key="cHVibGlj",
        status=status,  # type: ignore[arg-type]
        created_at=NOW - timedelta(minutes=1),
        expires_at=NOW + timedelta(days=7),
        artifacts=[] if status == "pending" else [item],
    )


def _store(services: Services, record: OperationRecord) -> None:
    services.records.create(record, {"text": "hello"})
    for item in record.artifacts:
        services.store.put_bytes(item.object_key(record.id), b"x" * item.ciphertext_size)


def _fill(services: Services, records: Iterable[OperationRecord], threads: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda r: _store(services, r), records):
            pass
    return time.perf_counter() - start


def _fresh(services: Services) -> Services:
    """The same servers, a new record cache: a pass that cannot profit from records read earlier."""
    services.records = OperationStore(services.store, services.keyring, services.redis)
    return services


def _show(label: str, counts: Counter[str]) -> str:
    kinds = " ".join(f"{kind}={counts[kind]}" for kind in sorted(counts))
    return f"{label:<44} {sum(counts.values()):>9,}   ({kinds})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000], help="stored operations")
    parser.add_argument("--changed", type=int, default=10, help="operations created before each counted pass")
    parser.add_argument("--threads", type=int, default=16, help="concurrent writers while filling")
    args = parser.parse_args()
    configure_logging("console", "WARNING")

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        seaweed = SeaweedServer(tmp / "weed", S3Credentials.generate(), log_path=tmp / "weed.log")
        valkey = ValkeyServer(tmp / "valkey", persistent=False)
        (tmp / "valkey").mkdir()
        seaweed.start()
        valkey.start()
        try:
            services = _services(seaweed, valkey, BUCKET)
            counter = RequestCounter()
            services.store.client.meta.events.register("before-send.s3", counter)  # type: ignore[attr-defined]
            stored, rows, counted = 0, [], []
            for stage, size in enumerate(sorted(args.sizes)):
                seconds = _fill(services, (_record() for _ in range(size - stored)), args.threads)
                print(f"stored {size - stored:,} operations in {seconds:.0f} s")
                stored = size
                counter.take()
                monitor.monitor_resources(_fresh(services), NOW)  # the first builds the ledger: the old walk
                taken = counter.take()
                if stage == 0:
                    rows.append(_show(f"ledger build, {stored:,} stored (one-time)", taken))
                    rows.append("  = what every pass cost before (walk + one record read per operation)")
                _fill(services, (_record("pending") for _ in range(args.changed)), args.threads)
                counter.take()
                report = monitor.monitor_resources(_fresh(services), NOW)
                counts = counter.take()
                counted.append(sum(counts.values()))
                rows.append(_show(f"pass with {args.changed} changed, {stored:,} stored", counts))
                assert report["operations"].get("succeeded") == stored, report["operations"]
        finally:
            valkey.stop()
            seaweed.stop()

    print(f"\nS3 requests per monitor pass (reconciliation slice {monitor.RECONCILE_PER_PASS} operations):")
    for row in rows:
        print(row)
    low, high = sorted(args.sizes)[0], sorted(args.sizes)[-1]
    print(f"  requests at {high:,} / at {low:,} stored: {counted[-1] / counted[0]:.2f}")


if __name__ == "__main__":
    main()
