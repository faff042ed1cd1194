"""Encrypting (and decrypting) a 200 MB stream must not grow peak memory with the artifact size.

Runs in a fresh interpreter so the peak RSS (ru_maxrss) belongs to this workload alone; the stream is generated
on the fly and the output discarded, so nothing of that size is ever stored.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

LIMIT_MB = 64
PROGRAM = textwrap.dedent(
    """
    import hashlib, json, os, resource
    from shared.crypto import decrypt_stream, encrypt_stream

    TOTAL, PIECE = 200 * 1024 * 1024, 1024 * 1024 + 7   # odd piece size: exercises re-chunking
    key, ctx = os.urandom(32), b"strongroom/v1|op|big.bin"
    block = os.urandom(PIECE)

    def source():
        sent = 0
        while sent < TOTAL:
            piece = block[: min(PIECE, TOTAL - sent)]
            sent += len(piece)
            yield piece

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    # Warm up the code paths once so one-off allocations (imports, caches) are in the baseline.
    for _ in decrypt_stream(key, ctx, encrypt_stream(key, ctx, [block])):
        pass
    before = peak_mb()
    digest, sealed = hashlib.sha256(), 0
    for piece in encrypt_stream(key, ctx, source()):
        sealed += len(piece)
    after_encrypt = peak_mb()
    plain = 0
    for piece in decrypt_stream(key, ctx, encrypt_stream(key, ctx, source())):
        plain += len(piece)
    print(json.dumps({"before": before, "after_encrypt": after_encrypt,
                      "after_decrypt": peak_mb(), "sealed": sealed, "plain": plain}))
    """
)


def test_200mb_stream_keeps_peak_rss_growth_small() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["plain"] == 200 * 1024 * 1024
    assert figures["sealed"] > figures["plain"]
    assert figures["after_encrypt"] - figures["before"] < LIMIT_MB, figures
    assert figures["after_decrypt"] - figures["before"] < LIMIT_MB, figures
