"""Fixtures of the fault suite (marker ``faults``): one fault stack per session, see ``tests/faults/stack.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from strongroom.dev.servers import SeaweedServer
from tests.faults.stack import FaultStack, build


@pytest.fixture(scope="session")
def fault_stack(stack_env: dict[str, str], stack_dir: Path, s3_server: object) -> Iterator[FaultStack]:
    if not isinstance(s3_server, SeaweedServer):
        pytest.skip("the fault suite runs against the embedded SeaweedFS (STRONGROOM_TEST_S3_ENDPOINT_URL is set)")
    yield from build(stack_env, stack_dir, s3_server.port)


@pytest.fixture
def stack(fault_stack: FaultStack) -> Iterator[FaultStack]:
    """The session's fault stack, healed after each scenario: proxies forwarding, Valkey and a worker running."""
    yield fault_stack
    fault_stack.redis_proxy.accept()
    fault_stack.s3_proxy.accept()
    if fault_stack.valkey.pid is None:
        fault_stack.valkey.start()
    fault_stack.stop_beats()
    if fault_stack.worker is None or not fault_stack.worker.running():
        fault_stack.start_worker()
