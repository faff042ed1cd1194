"""SDK download + decrypt against a raw download of the same ciphertext, in one run (issue 14 goal 5).

One artifact of ``--mib`` MiB (random plaintext, Cobblestone-256, its data key wrapped for a fresh identity) is
stored in the embedded SeaweedFS and fetched through one presigned URL, alternately:

* **raw**: the SDK's own HTTP client (``httpx``, same settings) streams the ciphertext into a file in the
  destination directory and fsyncs it: the floor any verified download has to pay;
* **sdk**: ``strongroom.client.download.download_artifact`` with the SDK's presigned-URL source: ciphertext
  checksum, key unwrap, decryption, plaintext checksum, fsync and the atomic rename onto ``dest``;
* **sdk-openssl** (with ``--openssl``): the same with ``cryptography``'s (OpenSSL) AES-GCM instead of the
  default (libsodium where the CPU allows, issue 4), to show what the backend is worth.

    .venv/bin/python bench/bench_download.py [--mib 100] [--rounds 3] [--openssl]

Prints MiB/s of each (median of the rounds) and sdk / raw. Both write to the same temp directory, so the disk
is the same; the output is deleted after every round so the page cache starts each one alike.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def store_artifact(env: dict[str, str], mib: int, root: Path) -> tuple[Any, Any, str]:
    """(identity, ticket, presigned URL) of one stored artifact of ``mib`` MiB."""
    from shared.crypto import cobblestone, keywrap
    from shared.settings import Settings
    from shared.storage.s3 import S3ObjectStore
    from strongroom.client.download import DownloadTicket
    from strongroom.client.identity import generate_identity

    settings = Settings.from_env(env)
    store = S3ObjectStore.from_settings(settings)
    store.ensure_bucket()
    identity = generate_identity()
    operation_id, name = "bench_" + "a" * 26, "big.bin"
    plain = root / "plain.bin"
    with plain.open("wb") as out:
        for _ in range(mib):
            out.write(secrets.token_bytes(1024 * 1024))
    data_key = secrets.token_bytes(32)
    sealed = root / "sealed.bin"
    with plain.open("rb") as src, sealed.open("wb") as dst:
        result = cobblestone.encrypt_file(data_key, cobblestone.artifact_context(operation_id, name), src, dst)
    plain.unlink()
    key = f"bench/{operation_id}/{name}.enc"
    with sealed.open("rb") as src:
        store.put_file(key, src, size=result.ciphertext_size, sha256_hex=result.ciphertext_sha256)
    sealed.unlink()
    wrapped = keywrap.wrap_data_key(
        identity.encryption_public_key, operation_id, name, data_key, result.plaintext_sha256
    )
    ticket = DownloadTicket(
        operation_id=operation_id,
        name=name,
        size=result.plaintext_size,
        content_type="application/octet-stream",
        checksum="sha256:" + result.plaintext_sha256,
        ciphertext_checksum="sha256:" + result.ciphertext_sha256,
        wrapped_key=wrapped,
    )
    url = store.presign_get(key, ttl=3600).url
    return identity, ticket, url


def raw_download(client: Any, url: str, dest: Path) -> None:
    """The floor: the same HTTP client streaming the same bytes into a file, then fsync."""
    with client._http.stream("GET", url) as response, dest.open("wb") as out:
        response.raise_for_status()
        for piece in response.iter_bytes():
            out.write(piece)
        out.flush()
        os.fsync(out.fileno())


def sdk_download(client: Any, ticket: Any, url: str, dest: Path, backend: Any = None) -> None:
    from dataclasses import replace

    from strongroom.client.download import download_artifact

    located = replace(ticket, url=url)
    download_artifact(located, client.identity.encryption_secret_key, dest, client._source(located), backend=backend)


def main() -> None:
    from strongroom.client import StrongroomClient
    from strongroom.dev.servers import S3Credentials, SeaweedServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="destination directory (default: a temp dir)")
    parser.add_argument("--openssl", action="store_true", help="also run the SDK with cryptography's AES-GCM")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="strongroom-bench-") as tmp:
        root = Path(tmp)
        out_dir = args.out or root / "out"
        out_dir.mkdir(parents=True, exist_ok=True)
        with SeaweedServer(root / "s3", S3Credentials.generate()) as s3:
            env = {
                "REDIS_URL": "redis://unused",
                "STRONGROOM_S3_ENDPOINT_URL": s3.endpoint_url,
                "AWS_ACCESS_KEY_ID": s3.access_key,
                "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                "AWS_REGION": s3.region,
                "STRONGROOM_S3_BUCKET": f"bench-{secrets.token_hex(4)}",
            }
            os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
            identity, ticket, url = store_artifact(env, args.mib, root)
            size = ticket.ciphertext_size
            client = StrongroomClient("http://127.0.0.1:9", identity)
            variants = {
                "raw": lambda dest: raw_download(client, url, dest),
                "sdk": lambda dest: sdk_download(client, ticket, url, dest),
            }
            if args.openssl:
                from shared.crypto.aead import CryptographyAesGcm

                variants["sdk-openssl"] = lambda dest: sdk_download(client, ticket, url, dest, CryptographyAesGcm)
            for name, fetch in variants.items():  # warm-up: connections, imports, SeaweedFS caches
                dest = out_dir / f"warm-{name}"
                fetch(dest)
                dest.unlink()
            figures: dict[str, list[float]] = {name: [] for name in variants}
            cpu: dict[str, list[float]] = {name: [] for name in variants}
            for round_no in range(args.rounds):
                order = list(variants.items())
                for name, fetch in order if round_no % 2 == 0 else order[::-1]:  # alternate: drift cancels
                    dest = out_dir / f"{name}.bin"
                    start, start_cpu = time.perf_counter(), time.process_time()
                    fetch(dest)
                    elapsed = time.perf_counter() - start
                    cpu[name].append((time.process_time() - start_cpu) * 1000)
                    figures[name].append(size / elapsed / 2**20)
                    if name != "raw":
                        digest = hashlib.sha256(dest.read_bytes()).hexdigest()
                        assert "sha256:" + digest == ticket.checksum, "the SDK wrote the wrong plaintext"
                    dest.unlink()
                    leftovers = sorted(p.name for p in out_dir.iterdir())
                    assert not leftovers, f"left behind: {leftovers}"
            client.close()
    raw = statistics.median(figures["raw"])
    print(f"{args.mib} MiB, median of {args.rounds} rounds (MiB/s of ciphertext; client CPU ms, all threads)")
    labels = {"raw": "raw download + fsync", "sdk": "SDK download + decrypt", "sdk-openssl": "SDK, OpenSSL AES-GCM"}
    for name in figures:
        rounds = ", ".join(f"{f:.0f}" for f in figures[name])
        print(
            f"{labels[name]:24} {statistics.median(figures[name]):8.1f} MiB/s  "
            f"{statistics.median(cpu[name]):7.0f} ms CPU   rounds: {rounds}"
        )
    for name in figures:
        if name != "raw":
            print(f"{name} / raw: {statistics.median(figures[name]) / raw:.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
