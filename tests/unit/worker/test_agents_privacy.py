"""The built-in privacy-audit agent: real findings with line numbers, masked values, runner protocol."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from shared.settings import Settings
from worker_service.agents import privacy_audit, registry
from worker_service.agents.inputs import write_input
from worker_service.agents.runner import Limits, run_agent
from worker_service.agents.workdir import fresh_workdir

pytestmark = pytest.mark.unit

AWS_KEY = "AKIA" + "ABCDEFGHIJKLMNOP"
HEX_KEY = "0x" + "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
TEXT = "\n".join(
    [
        "Hello team,",
        "contact alice.smith@example.com or call +1 415-555-0132",
        "server at 203.0.113.7, loopback 127.0.0.1 is fine",
        f"aws key {AWS_KEY} leaked",
        f"wallet {HEX_KEY}",
        "-----BEGIN RSA PRIVATE KEY-----",
        "nothing here, version 1.2.3.4.5 and 2024-01-01",
    ]
)


def kinds_by_line(findings: list[privacy_audit.Finding]) -> set[tuple[int, str]]:
    return {(f.line, f.kind) for f in findings}


def test_scan_finds_each_kind_with_its_line() -> None:
    found = kinds_by_line(list(privacy_audit.scan_lines("t", TEXT.splitlines())))
    assert found == {
        (2, "email"),
        (2, "phone_number"),
        (3, "ip_address"),
        (4, "aws_access_key_id"),
        (5, "hex_private_key"),
        (6, "private_key_block"),
    }


def test_masking_hides_the_secret() -> None:
    findings = list(privacy_audit.scan_lines("t", TEXT.splitlines()))
    masked = " ".join(f.masked for f in findings)
    assert AWS_KEY not in masked and HEX_KEY not in masked and "alice.smith@" not in masked
    assert "a***@example.com" in masked


def test_agent_runs_under_the_runner_protocol(tmp_path: Path) -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"})
    spec = registry.resolve(settings, "privacy-audit")
    limits = Limits(max_execution_time=30, max_disk_usage=1 << 26, max_artifact_count=50, max_artifact_size=1 << 20)
    agent_input = {"text": TEXT, "files": {"notes.txt": base64.b64encode(b"ok\nbob@example.org\n").decode()}}
    with fresh_workdir(tmp_path) as workdir:  # in its sandbox: only the interpreter and its one file are mounted
        write_input(workdir, agent_input)
        run = run_agent(spec.argv(workdir, agent_input), workdir, limits, mounts=spec.mounts)
        assert run.exit_code == 0, run.logs
        assert run.reported_status == "ok"
        assert run.reported_summary is not None and run.reported_summary.startswith("7 finding(s) in 2 source(s)")
        report = (workdir.out_dir / "privacy_audit.md").read_text()
        recommendations = json.loads((workdir.out_dir / "recommendations.json").read_text())
    assert "| notes.txt | 2 | email | `b***@example.org` |" in report
    assert "| input text | 4 | aws_access_key_id |" in report
    assert AWS_KEY not in report
    assert recommendations["findings"] == 7
    assert {r["kind"] for r in recommendations["recommendations"]} >= {"email", "aws_access_key_id"}


def test_clean_input_says_so(tmp_path: Path) -> None:
    (tmp_path / "input.json").write_text(json.dumps({"text": "nothing to see"}))
    assert privacy_audit.main(tmp_path) == 0
    assert "No personal data or secrets were found." in (tmp_path / "out" / "privacy_audit.md").read_text()
