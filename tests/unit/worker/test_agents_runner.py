"""The sandboxed runner and the out/ checks, with real child processes and the misbehaving test agent."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings
from tests.agents.harness import AGENT, agent_mounts, agent_python
from worker_service.agents import registry
from worker_service.agents.inputs import write_input
from worker_service.agents.outputs import LimitExceeded, collect_outputs
from worker_service.agents.runner import (
    LOG_LINE_BYTES,
    LOG_LINES,
    Limits,
    agent_environment,
    disk_usage,
    final_report,
)
from worker_service.agents.runner import run_agent as sandboxed_run
from worker_service.agents.workdir import Workdir, fresh_workdir

pytestmark = pytest.mark.unit

LIMITS = Limits(max_execution_time=20, max_disk_usage=50 << 20, max_artifact_count=5, max_artifact_size=1 << 20)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Workdir]:
    with fresh_workdir(tmp_path) as wd:
        yield wd


def misbehave(*args: str) -> list[str]:
    """Run under the default sandbox policy, with an interpreter a separate agent user could run."""
    return [agent_python(), AGENT, *args]


def run_agent(argv: list[str], workdir: Workdir, limits: Limits, **kwargs: Any) -> Any:
    """The runner with misbehave.py's script mounted in the sandbox."""
    return sandboxed_run(argv, workdir, limits, mounts=[Path(m) for m in agent_mounts()], **kwargs)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_fresh_workdir_is_private_and_removed(tmp_path: Path) -> None:
    with fresh_workdir(tmp_path / "base") as wd:
        assert all(sub.is_dir() for sub in (wd.out_dir, wd.in_dir, wd.tmp_dir, wd.home_dir))
        assert wd.root.stat().st_mode & 0o077 == 0
        root = wd.root
    assert not root.exists()


def test_environment_is_scrubbed(workdir: Workdir) -> None:
    parent = {
        "PATH": "/usr/bin",
        "STRONGROOM_KEYRING": "secret",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "REDIS_URL": "redis://x",
        "HOME": "/root",
        "SOMETHING_ELSE": "x",
    }
    run = run_agent(misbehave("env"), workdir, LIMITS, parent_env=parent)
    assert run.outcome == "exited" and run.exit_code == 0
    seen = json.loads((workdir.out_dir / "env.json").read_text())
    assert not any(k.startswith(("STRONGROOM_", "AWS_", "REDIS_")) for k in seen)
    assert "SOMETHING_ELSE" not in seen
    assert seen["HOME"] == str(workdir.home_dir)
    assert seen["TMPDIR"] == str(workdir.tmp_dir)
    assert seen["PATH"] == "/usr/local/bin:/usr/bin:/bin"  # the sandbox's own, not the worker's
    assert agent_environment(workdir, {})["PATH"]  # a default PATH when the parent has none


def test_final_json_line_and_exit_code(workdir: Workdir) -> None:
    run = run_agent(misbehave("files", "2"), workdir, LIMITS)
    assert run.exit_code == 0 and run.reported_status == "ok" and run.reported_summary == "wrote 2 files"
    failed = run_agent(misbehave("fail"), workdir, LIMITS)
    assert failed.exit_code == 3 and failed.reported is None
    assert failed.logs == ["something went wrong"]


def test_final_report_picks_last_json_object() -> None:
    lines = ['{"status": "ok", "summary": "first"}', "noise", '{"summary": "last"}', "[1, 2]", "{not json"]
    assert final_report(lines) == {"summary": "last"}
    assert final_report(["plain"]) is None


def test_logs_are_bounded_in_count_and_size(workdir: Workdir) -> None:
    run = run_agent(misbehave("chatty", "500"), workdir, LIMITS)
    assert run.exit_code == 0
    assert len(run.logs) == LOG_LINES
    assert all(len(line.encode()) <= LOG_LINE_BYTES + 10 for line in run.logs)
    assert run.logs[-1] == '{"status": "ok", "summary": "chatty done"}'
    assert run.logs[-2].startswith("line 499 ") and run.logs[-2].endswith("[...]")


def test_wall_clock_limit_kills_the_agent(workdir: Workdir) -> None:
    limits = Limits(max_execution_time=1, max_disk_usage=LIMITS.max_disk_usage, max_artifact_count=5,
                    max_artifact_size=1 << 20)  # fmt: skip
    run = run_agent(misbehave("slow", "30"), workdir, limits, poll_interval=0.1)
    assert run.outcome == "timeout"
    assert run.execution_time < 10


def test_disk_limit_kills_the_agent(workdir: Workdir) -> None:
    limits = Limits(max_execution_time=30, max_disk_usage=3 << 20, max_artifact_count=5, max_artifact_size=1 << 20)
    run = run_agent(misbehave("disk", str(40 << 20)), workdir, limits, poll_interval=0.1)
    assert run.outcome == "disk"  # the scratch tmpfs is full: the kernel stopped it at the limit
    assert run.disk_usage >= 3 << 20


def test_disk_usage_counts_allocated_blocks_sparse_files_and_hard_links_honestly(tmp_path: Path) -> None:
    """Issue 10 item 3: what the check after exit counts. Each inode once (a hard link adds nothing), at the
    larger of its size (a sparse file could be uploaded at that size) and its allocated blocks (preallocated)."""
    root = tmp_path / "out"
    (root / "sub").mkdir(parents=True)
    empty = disk_usage(root)
    dense = root / "sub" / "dense.bin"
    dense.write_bytes(b"x" * (1 << 20))
    assert disk_usage(root) - empty >= 1 << 20
    os.link(dense, root / "again.bin")
    assert disk_usage(root) - empty < 2 << 20  # the second name is not a second MiB
    with (root / "sparse.bin").open("wb") as sparse:
        sparse.truncate(64 << 20)  # no blocks allocated
    assert disk_usage(root) - empty >= 65 << 20
    preallocated = root / "prealloc.bin"
    preallocated.touch()
    subprocess.run(["fallocate", "--keep-size", "-l", str(8 << 20), str(preallocated)], check=True)
    assert preallocated.stat().st_size == 0 and preallocated.stat().st_blocks * 512 >= 8 << 20
    assert disk_usage(root) - empty >= 73 << 20


def test_cancel_kills_the_whole_group_even_when_sigterm_is_ignored(workdir: Workdir) -> None:
    pidfile = workdir.out_dir / "pids.json"  # pids inside its PID namespace
    started = time.monotonic()

    def should_stop() -> bool:
        return pidfile.exists() and pidfile.stat().st_size > 0

    run = run_agent(misbehave("stubborn", str(pidfile)), workdir, LIMITS, should_stop=should_stop, poll_interval=0.1)
    assert run.outcome == "cancelled"
    assert time.monotonic() - started < 15
    pids = json.loads(pidfile.read_text())
    assert len(pids) == 2
    stubborn = subprocess.run(["pgrep", "-f", "time.sleep\\(600\\)"], capture_output=True, check=False)
    assert stubborn.returncode == 1  # both killed before run_agent returned


def test_file_size_rlimit_applies(workdir: Workdir) -> None:
    limits = Limits(max_execution_time=20, max_disk_usage=50 << 20, max_artifact_count=5, max_artifact_size=10)
    run = run_agent(misbehave("big", str(4 << 20)), workdir, limits)
    assert run.exit_code != 0  # EFBIG past max_artifact_size + margin
    assert (workdir.out_dir / "big.bin").stat().st_size <= 10 + (1 << 20)


def test_collect_outputs_limits(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert collect_outputs(out, LIMITS) == []
    for i in range(6):
        (out / f"f{i}.txt").write_text("x")
    with pytest.raises(LimitExceeded, match=r"^artifact limit exceeded: 6 files, max 5$"):
        collect_outputs(out, LIMITS)
    (out / "f5.txt").unlink()
    assert [f.name for f in collect_outputs(out, LIMITS)] == [f"f{i}.txt" for i in range(5)]
    (out / "f4.txt").write_bytes(b"x" * ((1 << 20) + 1))
    with pytest.raises(
        LimitExceeded, match=re.escape("artifact size limit exceeded: 'f4.txt' is 1048577 bytes, max 1048576")
    ):
        collect_outputs(out, LIMITS)
    (out / "f4.txt").unlink()
    (out / "link").symlink_to(out / "f0.txt")
    with pytest.raises(LimitExceeded, match="is a symlink"):
        collect_outputs(out, LIMITS)
    (out / "link").unlink()
    (out / "dir").mkdir()
    with pytest.raises(LimitExceeded, match="is a directory"):
        collect_outputs(out, LIMITS)
    (out / "dir").rmdir()
    (out / "bad\x07name").write_text("x")
    with pytest.raises(LimitExceeded, match="invalid artifact name"):
        collect_outputs(out, LIMITS)


def test_write_input_materialises_files_and_refuses_escapes(workdir: Workdir) -> None:
    write_input(workdir, {"text": "hi", "files": {"a.txt": "aGVsbG8="}})
    assert (workdir.in_dir / "a.txt").read_bytes() == b"hello"
    assert json.loads(workdir.input_file.read_text()) == {"text": "hi", "files": ["a.txt"]}
    from shared.errors import ValidationFailed

    with pytest.raises(ValidationFailed):
        write_input(workdir, {"files": {"../evil": "aGVsbG8="}})
    with pytest.raises(ValidationFailed):
        write_input(workdir, {"files": {"ok.txt": "not base64!"}})
    assert not (workdir.root.parent / "evil").exists()


def test_registry_substitutes_placeholders_as_single_arguments(workdir: Workdir) -> None:
    settings = Settings.from_env(
        {"REDIS_URL": "redis://127.0.0.1:1/0", "STRONGROOM_AGENTS": json.dumps(
            {"gemini": {"command": ["gemini", "-p", "{prompt}", "--in={input}", "-y"]}})}
    )  # fmt: skip
    spec = registry.resolve(settings, "gemini")
    argv = spec.argv(workdir, {"prompt": "hello; rm -rf / $(x)"})
    assert argv == ["gemini", "-p", "hello; rm -rf / $(x)", f"--in={workdir.input_file}", "-y"]
    assert registry.resolve(settings, "privacy-audit").command[-1].endswith("worker_service/agents/privacy_audit.py")
    from shared.errors import ValidationFailed

    with pytest.raises(ValidationFailed):
        registry.resolve(settings, "nope")
