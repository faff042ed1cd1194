"""Cobblestone-256 throughput next to raw AES-256-GCM of the same library, measured in the same run.

The ratio is the figure that matters: it is Cobblestone's cost (chunking, nonce derivation, Python per-chunk
overhead) over the bare AEAD, independent of how fast this machine is. Raw AES-GCM seals the same bytes in the
same 16 KiB pieces with one key, so the only difference is the format.

    .venv/bin/python bench/bench_crypto.py [--sizes 1,10,100] [--backend pynacl|cryptography]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator

from shared.crypto import decrypt_stream, encrypt_stream
from shared.crypto.aead import BACKENDS, AeadFactory, default_backend

MB = 1024 * 1024
PIECE = MB  # how a worker reads a file


def _pieces(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for i in range(0, len(data), PIECE):
        yield bytes(view[i : i + PIECE])


def _best_of(runs: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def _drain(it: Iterator[bytes]) -> None:
    for _ in it:
        pass


def bench(size_mb: int, backend: AeadFactory) -> dict[str, float]:
    data = os.urandom(size_mb * MB)
    key, ctx = os.urandom(32), b"strongroom/v1|bench|data.bin"
    aead = backend(key)
    nonce = bytes(12)
    chunks = [data[i : i + 16384] for i in range(0, len(data), 16384)]
    sealed_chunks = [aead.seal(nonce, c) for c in chunks]
    ciphertext = b"".join(encrypt_stream(key, ctx, [data], backend=backend))
    runs = 5 if size_mb < 100 else 2
    times = {
        "raw_seal": _best_of(runs, lambda: _drain(aead.seal(nonce, c) for c in chunks)),
        "raw_open": _best_of(runs, lambda: _drain(aead.open(nonce, c) for c in sealed_chunks)),
        "encrypt": _best_of(runs, lambda: _drain(encrypt_stream(key, ctx, _pieces(data), backend=backend))),
        "decrypt": _best_of(runs, lambda: _drain(decrypt_stream(key, ctx, _pieces(ciphertext), backend=backend))),
    }
    return {name: size_mb / seconds for name, seconds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100", help="comma-separated sizes in MB")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default=None, help="default: auto")
    args = parser.parse_args()
    backend = BACKENDS[args.backend] if args.backend else default_backend()
    name = getattr(backend, "name", str(backend))
    print(f"backend: {name} (AES-256-GCM), MB/s, best of runs; ratio = cobblestone / raw same-library AEAD")
    print(f"{'size':>6} {'raw seal':>9} {'encrypt':>9} {'ratio':>6} {'raw open':>9} {'decrypt':>9} {'ratio':>6}")
    for size in (int(s) for s in args.sizes.split(",")):
        r = bench(size, backend)
        print(
            f"{size:>4}MB {r['raw_seal']:>9.0f} {r['encrypt']:>9.0f} {r['encrypt'] / r['raw_seal']:>6.2f}"
            f" {r['raw_open']:>9.0f} {r['decrypt']:>9.0f} {r['decrypt'] / r['raw_open']:>6.2f}"
        )


if __name__ == "__main__":
    main()
