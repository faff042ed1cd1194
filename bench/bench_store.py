"""The worker's artifact store (``store_artifacts``: encrypt, hash, upload, wrap) against an embedded SeaweedFS,
next to its two floors measured in the same run (issue 14, goal 4):

* one large artifact (``--mib``, default 100 MiB): MiB/s of ``store_artifacts`` against raw S3 PUTs of the same
  number of bytes (boto3 ``put_object`` streamed from a file, and boto3 ``upload_fileobj``; the faster of the two
  is the "raw PUT") and against raw AES-256-GCM sealing the same bytes in 16 KiB chunks (the library the format
  uses). Goal: >= 0.70 of min(raw PUT, raw AES-GCM).
* one operation of ``--files`` small artifacts (default 50 x 20 KiB): wall time of ``store_artifacts`` against
  the same number of raw ``put_object`` calls of the same sizes, one after another. Goal: < 3x.

Variants run interleaved, round by round, and each figure is the median of ``--repeat`` rounds (each run printed
too). The S3 client is ``S3ObjectStore.from_settings``'s, so its configuration is production's.

    .venv/bin/python bench/bench_store.py [--mib 100] [--files 50] [--kib 20] [--repeat 3] [--skip-large]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import redis

from shared import layout
from shared.crypto import keywrap
from shared.crypto.aead import default_backend
from shared.crypto.keyring import Keyring
from shared.logging import configure as configure_logging
from shared.models import OperationRecord, utcnow
from shared.records import OperationStore
from shared.settings import Settings
from shared.storage.s3 import MiB, S3ObjectStore
from strongroom.dev.servers import S3Credentials, SeaweedServer
from worker_service.pipeline.store import store_artifacts
from worker_service.services import Services

BUCKET = "bench-store"
CHUNK = 16 * 1024


def _services(server: SeaweedServer) -> Services:
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://127.0.0.1:1/0",  # required by Settings; store_artifacts never contacts it
            "STRONGROOM_S3_ENDPOINT_URL": server.endpoint_url,
            "STRONGROOM_S3_BUCKET": BUCKET,
            "STRONGROOM_S3_ADDRESSING_STYLE": "path",
            "AWS_REGION": server.region,
            "AWS_ACCESS_KEY_ID": server.credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": server.credentials.secret_key,
        }
    )
    store = S3ObjectStore.from_settings(settings)
    store.ensure_bucket()
    client = redis.Redis.from_url(settings.redis_url)
    keyring = Keyring.from_json(Keyring.generate_json("bench"))
    return Services(settings, client, store, keyring, OperationStore(store, keyring, None))


def _record(public_key: str) -> OperationRecord:
    now = utcnow()
    return OperationRecord(
        id=layout.new_operation_id("privacy-audit"),
        agent="privacy-audit",
        grantee="0x" + "ab" * 20,
        encryption_public_key=public_key,
        status="running",
        created_at=now,
        expires_at=now + timedelta(days=7),
    )


def _write_random(path: Path, size: int) -> None:
    with path.open("wb") as out:
        for offset in range(0, size, MiB):
            out.write(os.urandom(min(MiB, size - offset)))


def _interleaved(runs: list[tuple[str, Callable[[], None]]], repeat: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name, _ in runs}
    for _ in range(repeat):
        for name, run in runs:
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def _ours(services: Services, out: Path, public_key: str) -> Callable[[], None]:
    def run() -> None:
        store_artifacts(
            services,
            _record(public_key),
            out,
            run_id=layout.new_run_id(),
            ensure_owner=lambda: None,
        )

    return run


def _large(services: Services, tmp: Path, public_key: str, mib: int, repeat: int) -> dict[str, list[float]]:
    store = services.store
    assert isinstance(store, S3ObjectStore)
    out = tmp / "large-out"
    out.mkdir()
    size = mib * MiB
    _write_random(out / "data.bin", size)
    aead = default_backend()(os.urandom(32))
    nonce = bytes(12)

    def raw_put() -> None:
        with (out / "data.bin").open("rb") as src:
            store.client.put_object(Bucket=BUCKET, Key="bench/raw-put", Body=src, ContentLength=size)

    def raw_upload_fileobj() -> None:
        with (out / "data.bin").open("rb") as src:
            store.client.upload_fileobj(src, BUCKET, "bench/raw-upload-fileobj")

    def raw_aes() -> None:
        with (out / "data.bin").open("rb") as src:
            while block := src.read(MiB):
                view = memoryview(block)
                for start in range(0, len(block), CHUNK):
                    aead.seal(nonce, view[start : start + CHUNK])

    ours = _ours(services, out, public_key)
    ours()  # warm-up: the first writes to a fresh server allocate its volumes
    return _interleaved(
        [
            ("store_artifacts", ours),
            ("raw put_object", raw_put),
            ("raw upload_fileobj", raw_upload_fileobj),
            ("raw AES-256-GCM", raw_aes),
        ],
        repeat,
    )


def _small(services: Services, tmp: Path, public_key: str, files: int, kib: int, repeat: int) -> dict[str, list[float]]:
    store = services.store
    assert isinstance(store, S3ObjectStore)
    out = tmp / "small-out"
    out.mkdir()
    payloads = [os.urandom(kib * 1024) for _ in range(files)]
    for n, data in enumerate(payloads):
        (out / f"file-{n:03d}.bin").write_bytes(data)

    def raw_puts() -> None:
        for n, data in enumerate(payloads):
            store.client.put_object(Bucket=BUCKET, Key=f"bench/raw-small/{n}", Body=data)

    ours = _ours(services, out, public_key)
    ours()
    raw_puts()
    return _interleaved([("store_artifacts", ours), ("raw put_object x N", raw_puts)], repeat)


def _line(name: str, times: list[float], unit: Callable[[float], float], fmt: str) -> str:
    runs = " ".join(format(unit(t), fmt) for t in times)
    return f"  {name:24s} {format(unit(statistics.median(times)), fmt):>10}   [{runs}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100, help="size of the large artifact, MiB")
    parser.add_argument("--files", type=int, default=50, help="small artifacts in one operation")
    parser.add_argument("--kib", type=int, default=20, help="size of each small artifact, KiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-small", action="store_true")
    args = parser.parse_args()
    configure_logging("console", "WARNING")
    public_key = keywrap.generate_encryption_keypair()[1]

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        server = SeaweedServer(tmp / "weed", S3Credentials.generate(), log_path=tmp / "weed.log")
        server.start()
        try:
            services = _services(server)
            large = None if args.skip_large else _large(services, tmp, public_key, args.mib, args.repeat)
            small = None if args.skip_small else _small(services, tmp, public_key, args.files, args.kib, args.repeat)
        finally:
            server.stop()

    if large is not None:
        med = {name: statistics.median(times) for name, times in large.items()}
        print(f"one {args.mib} MiB artifact, MiB/s, median of {args.repeat} (each run in brackets)")
        for name, times in large.items():
            print(_line(name, times, lambda t: args.mib / t, ".0f"))
        raw_put = min(med["raw put_object"], med["raw upload_fileobj"])
        floor = max(raw_put, med["raw AES-256-GCM"])  # the slower of the two floors (longest time)
        print(f"  store / raw PUT (faster of the two)        {raw_put / med['store_artifacts']:.2f}")
        print(f"  store / raw AES-256-GCM                    {med['raw AES-256-GCM'] / med['store_artifacts']:.2f}")
        print(f"  store / min(raw PUT, raw AES-GCM)          {floor / med['store_artifacts']:.2f}   (goal >= 0.70)")
    if small is not None:
        med = {name: statistics.median(times) for name, times in small.items()}
        print(f"one operation of {args.files} x {args.kib} KiB, ms, median of {args.repeat}")
        for name, times in small.items():
            print(_line(name, times, lambda t: t * 1000, ".1f"))
        ratio = med["store_artifacts"] / med["raw put_object x N"]
        print(f"  store / {args.files} sequential raw PUTs            {ratio:.2f}   (goal < 3)")


if __name__ == "__main__":
    main()
