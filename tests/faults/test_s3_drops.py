"""S3 connections dropped mid-upload (the worker storing a multipart artifact) and mid-download (a client
fetching one through a presigned URL): the run is retried and ends ``succeeded`` with nothing half-stored; the
client's download fails with a typed error, keeps its partial file, and resumes to the exact plaintext."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from shared.errors import StrongroomError
from tests.faults.stack import FaultStack

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

BIG = 24 << 20  # the "big" agent's one file: a multipart upload


def test_s3_dropping_mid_upload_is_retried_and_nothing_half_stored(stack: FaultStack) -> None:
    tripped = stack.s3_proxy.cut_after(upstream=6 << 20)  # only an artifact upload carries this much
    operation_id = stack.create("big")

    final = stack.wait_finished(operation_id, timeout=150)

    assert tripped.is_set(), "the upload was never cut"
    assert final.status == "succeeded", final.result
    assert [a.size for a in final.artifacts.artifacts] == [BIG]
    stack.assert_clean(operation_id)


def test_s3_dropping_mid_download_fails_cleanly_and_resumes(stack: FaultStack, tmp_path: Path) -> None:
    operation_id = stack.create("big")
    assert stack.wait_finished(operation_id).status == "succeeded"
    dest = tmp_path / "big.bin"

    tripped = stack.s3_proxy.cut_after(downstream=4 << 20)
    with stack.client() as client, pytest.raises(StrongroomError):
        client.download(operation_id, "big.bin", dest)
    assert tripped.is_set()
    assert not dest.exists(), "a half download became visible under its name"

    with stack.client() as client:
        client.download(operation_id, "big.bin", dest)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == hashlib.sha256(b"x" * BIG).hexdigest()
    stack.assert_clean(operation_id)
