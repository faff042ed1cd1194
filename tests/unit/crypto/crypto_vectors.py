"""Loading the vendored Wycheproof vectors (tests/vectors). A missing file is a failure, never a skip."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parents[2] / "vectors"


def load(name: str) -> dict[str, Any]:
    path = VECTORS / name
    if not path.is_file():
        raise FileNotFoundError(f"test vectors missing: {path} (tests/vectors is part of the repository)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def vector_tests(name: str) -> list[dict[str, Any]]:
    return [test for group in load(name)["testGroups"] for test in group["tests"]]


def cobblestone_tests() -> list[dict[str, Any]]:
    return vector_tests("wycheproof_c2sp_chunked_encryption_aes_256_gcm_test.json")


def cobblestone_ct(test: dict[str, Any]) -> bytes:
    return zlib.decompress(bytes.fromhex(test["ct"]))


def ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [f"tc{t['tcId']}-{'-'.join(t['flags']) or 'plain'}" for t in vectors]
