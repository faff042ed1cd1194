"""S3 requests per ``cleanup_expired`` run against an embedded SeaweedFS and Valkey: the count must follow the
operations that are due, not the ones stored (issue 14, goal 7).

Records are written directly through the store (not the API), first the way an older version stored them (record
and grantee index, no expiry marker), so the first cleanup run does the one-time migration walk: that run reads
exactly what every hourly run read before the expiry index (a LIST of ``operations/`` and one GET per record), and
its request count is the "before" figure. Then, for each size in ``--sizes``, more operations are added through
``OperationStore.create`` (with their markers) plus ``--due`` operations that fall due in one hour, and one cleanup
run at that hour is counted. Requests are counted at the HTTP layer (botocore's ``before-send``), so pagination
and retries are included.

At each size the orphan sweep is counted too: ``--strays`` unnamed artifact objects are put into random stored
operations, then one ``sweep_orphans`` run from the start of its cursor (what an hourly run costs) and the rest
of its cycle (until the cursor wraps: what the old sweep did in every run, LIST pages of the whole bucket, plus the
one record read per operation the old sweep made). The cycle must delete exactly the strays, nothing live.

    .venv/bin/python bench/bench_cleanup.py [--sizes 10000 30000] [--due 100] [--grantees 1000] [--threads 32]
        [--strays 10]
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from shared import layout
from shared.crypto.keyring import Keyring
from shared.logging import configure as configure_logging
from shared.models import OperationRecord
from shared.records import OperationStore
from shared.settings import Settings
from shared.storage.s3 import S3ObjectStore
from strongroom.dev.servers import S3Credentials, SeaweedServer, ValkeyServer
from worker_service.pipeline import retention
from worker_service.services import Services

BUCKET = "bench-cleanup"
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


class RequestCounter:
    """Counts every HTTP request the S3 client sends, by kind (LIST, LISTUPLOADS, GET, HEAD, PUT, DELETE, POST)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, request: Any, **_: Any) -> None:
        kind = request.method
        if kind == "GET" and "list-type=2" in request.url:
            kind = "LIST"
        elif kind == "GET" and "?uploads" in request.url:
            kind = "LISTUPLOADS"  # ListMultipartUploads
        self.counts[kind] += 1

    def take(self) -> Counter[str]:
        taken, self.counts = self.counts, Counter()
        return taken


def _services(seaweed: SeaweedServer, valkey: ValkeyServer, bucket: str = BUCKET) -> Services:
    settings = Settings.from_env(
        {
            "REDIS_URL": valkey.url,
            "STRONGROOM_S3_ENDPOINT_URL": seaweed.endpoint_url,
            "STRONGROOM_S3_BUCKET": bucket,
            "STRONGROOM_S3_ADDRESSING_STYLE": "path",
            "AWS_REGION": seaweed.region,
            "AWS_ACCESS_KEY_ID": seaweed.credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": seaweed.credentials.secret_key,
        }
    )
    store = S3ObjectStore.from_settings(settings)
    store.ensure_bucket()
    client = redis.Redis.from_url(valkey.url)
    keyring = Keyring.from_json(Keyring.generate_json("bench"))
    return Services(settings, client, store, keyring, OperationStore(store, keyring, client))


def _record(grantee: str, created: datetime, expires: datetime) -> OperationRecord:
    return OperationRecord(
        id=layout.new_operation_id("privacy-audit"),
        agent="privacy-audit",
        grantee=grantee,
        encryption_public_key="cHVibGlj",
        status="succeeded",
        created_at=created,
        expires_at=expires,
    )


def _store_legacy(services: Services, record: OperationRecord) -> None:
    """What a version without the expiry index stored: the record and its grantee index entry."""
    services.records.put(record)
    created = int(record.created_at.timestamp())
    services.store.put_bytes(layout.grantee_index_key(record.grantee, created, record.id), b"")


def _store_current(services: Services, record: OperationRecord) -> None:
    services.records.create(record, {})


def _fill(
    services: Services,
    records: Iterable[OperationRecord],
    write: Callable[[Services, OperationRecord], None],
    threads: int,
) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda r: write(services, r), records, chunksize=64):
            pass
    return time.perf_counter() - start


def _kept(count: int, grantees: list[str]) -> Iterable[OperationRecord]:
    """Operations that expire days after every cleanup this benchmark runs."""
    for n in range(count):
        created = T0 - timedelta(minutes=n % 2880)
        yield _record(grantees[n % len(grantees)], created, created + timedelta(days=7))


def _due(count: int, grantees: list[str], hour: datetime) -> list[OperationRecord]:
    """Operations that expire within ``hour``."""
    return [
        _record(grantees[n % len(grantees)], T0 - timedelta(days=1), hour + timedelta(seconds=n % 3600))
        for n in range(count)
    ]


def _sweep_rows(services: Services, counter: RequestCounter, stored: int, strays: int) -> list[str]:
    """Count one orphan sweep run from the cursor's start and the rest of its cycle, with ``strays`` orphans."""
    ids = [prefix[len(layout.OPERATIONS) : -1] for prefix in services.store.list_prefixes(layout.OPERATIONS)]
    for operation_id in secrets.SystemRandom().sample(ids, min(strays, len(ids))):
        services.store.put_bytes(layout.artifact_key(operation_id, "stray.bin", layout.new_run_id()), b"x")
    services.redis.delete(retention.SWEEP_CURSOR)
    services.records = OperationStore(services.store, services.keyring, services.redis)  # nothing cached
    later = datetime.now(UTC) + timedelta(hours=2)  # past the age gate for every object stored so far
    counter.take()
    deleted = retention.sweep_orphans(services, now=later)
    first = counter.take()
    runs, cycle = 1, Counter(first)
    while services.redis.exists(retention.SWEEP_CURSOR):
        deleted += retention.sweep_orphans(services, now=later)
        runs += 1
    cycle += counter.take()
    assert deleted == min(strays, len(ids)), (deleted, strays)
    old = cycle["LIST"] + stored  # the old sweep listed everything and read every record, in every run
    return [
        _show(f"sweep run (of {runs}), {stored:,} stored", first),
        _show(f"  whole sweep cycle, {runs} runs, {deleted} strays found", cycle),
        f"  old sweep per run at this size ~{old:,} (LIST {cycle['LIST']:,} + an uncached record GET per operation);"
        f" x{old / sum(first.values()):,.0f} the new run",
    ]


def _show(label: str, counts: Counter[str]) -> str:
    kinds = " ".join(f"{kind}={counts[kind]}" for kind in sorted(counts))
    return f"{label:<44} {sum(counts.values()):>9,}   ({kinds})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000], help="stored operations")
    parser.add_argument("--due", type=int, default=100, help="operations due in each counted run")
    parser.add_argument("--grantees", type=int, default=1000, help="distinct grantee addresses")
    parser.add_argument("--threads", type=int, default=32, help="concurrent writers while filling")
    parser.add_argument("--strays", type=int, default=10, help="orphans placed before each counted sweep")
    args = parser.parse_args()
    configure_logging("console", "WARNING")
    grantees = ["0x" + secrets.token_hex(20) for _ in range(args.grantees)]

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        seaweed = SeaweedServer(tmp / "weed", S3Credentials.generate(), log_path=tmp / "weed.log")
        valkey = ValkeyServer(tmp / "valkey", persistent=False)
        (tmp / "valkey").mkdir()
        seaweed.start()
        valkey.start()
        try:
            services = _services(seaweed, valkey)
            counter = RequestCounter()
            services.store.client.meta.events.register("before-send.s3", counter)  # type: ignore[attr-defined]
            stored = 0
            rows: list[str] = []
            printed = 0
            for stage, size in enumerate(sorted(args.sizes)):
                legacy = stage == 0
                seconds = _fill(
                    services, _kept(size - stored, grantees), _store_legacy if legacy else _store_current, args.threads
                )
                print(f"stored {size - stored:,} operations ({'legacy' if legacy else 'create'}) in {seconds:.0f} s")
                stored = size
                if legacy:
                    counter.take()
                    assert retention.cleanup_expired(services, T0) == 0
                    walk = counter.take()
                    before = Counter({k: v for k, v in walk.items() if k in {"LIST", "GET"}})
                    rows.append(_show(f"migration run, {stored:,} stored (one-time)", walk))
                    rows.append(_show("  of which the old hourly walk (LIST+GET)", before))
                    assert retention.cleanup_expired(services, T0) == 0
                    rows.append(_show(f"run with 0 due, {stored:,} stored", counter.take()))
                hour = T0 + timedelta(hours=2 + stage)
                due = _due(args.due, grantees, hour)
                _fill(services, due, _store_current, args.threads)
                counter.take()
                deleted = retention.cleanup_expired(services, hour + timedelta(hours=1))
                counts = counter.take()
                assert deleted == args.due, deleted
                rows.append(_show(f"run with {args.due} due, {stored:,} stored", counts))
                if legacy:
                    first_due = sum(counts.values())
                else:
                    ratio = sum(counts.values()) / first_due
                    rows.append(
                        f"  requests with {args.due} due at {stored:,} / at {sorted(args.sizes)[0]:,}: {ratio:.2f}"
                    )
                per_due = sum(counts.values()) / args.due
                old = sum(before.values()) * stored / sorted(args.sizes)[0]
                gain = old / sum(counts.values())
                rows.append(f"  per due operation {per_due:.1f}; old walk at this size ~{old:,.0f} (x{gain:,.0f})")
                try:
                    rows.extend(_sweep_rows(services, counter, stored, args.strays))
                except Exception as exc:  # the cleanup figures are worth keeping
                    rows.append(f"sweep count failed: {exc!r}")
                print("\n".join(rows[printed:]), flush=True)
                printed = len(rows)
        finally:
            valkey.stop()
            seaweed.stop()

    print(f"\nS3 requests per cleanup run ({args.grantees:,} grantees, SeaweedFS {seaweed.endpoint_url}):")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
