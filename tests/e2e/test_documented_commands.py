"""Every `strongroom ...` command shown in a code block of README.md, docs/cli.md and docs/audit-log.md runs
against a real `strongroom dev` and exits as documented, so the docs stay true.

- A ``console`` block is a session: its ``$`` lines run in order in one environment (``export`` and ``VAR=``
  lines kept), each command must exit 0, and what the block shows (``exit N`` after ``echo "exit $?"``, an
  ``error: ...`` line) must be what the command prints. The session's own API URL, identity folder and operation
  id are replaced by the test's.
- Any other block: each `strongroom` command in it (also ``A && B`` and ``# or: ...``) runs and must exit 0, with
  ``[optional]`` parts left out and placeholders (``<operation-id>``) replaced by a real operation. Commands that
  serve until stopped (api, worker, beat, dev) are only parsed: their documented options must exist.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from strongroom import connection
from strongroom.cli import build_parser
from tests.e2e.devstack import DevStack, clean_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/cli.md", "docs/audit-log.md")
SERVES = frozenset({"api", "worker", "beat", "dev"})
OPERATION_ID = re.compile(r"\b[a-z][a-z0-9-]*_[a-z2-7]{26}\b")
PLACEHOLDER = re.compile(r"<(operation-id|op|id|log)>")
# `strongroom` where a shell command starts: a line's start, after && or ;, in "# or: ..." or `...` in a comment.
COMMAND = re.compile(r"(?:^\s*|&&\s*|;\s*|or:\s*|`)(strongroom\s[^#;&`\n]*)", re.MULTILINE)
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks() -> list[tuple[str, str, str]]:
    return [(doc, m.group(1), m.group(2)) for doc in DOCS for m in BLOCK.finditer((ROOT / doc).read_text())]


@dataclass
class Step:
    command: str
    shown: list[str] = field(default_factory=list)  # the output the docs show under it


def sessions() -> list[tuple[str, list[Step]]]:
    found = []
    for doc, lang, body in blocks():
        if lang != "console":
            continue
        steps: list[Step] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                steps.append(Step(re.sub(r"\s+#\s.*$", "", line[2:]).strip()))
            elif steps:
                steps[-1].shown.append(line)
        if any("strongroom " in step.command for step in steps):
            found.append((doc, steps))
    return found


def standalone() -> list[tuple[str, str]]:
    return [
        (doc, match.group(1).strip())
        for doc, lang, body in blocks()
        if lang not in ("console", "python")
        for line in body.splitlines()
        if not line.lstrip().startswith(("strongroom api:", "error:"))  # quoted output, not a command
        for match in COMMAND.finditer(line)
    ]


def test_the_docs_show_commands() -> None:
    """The extraction finds what it is meant to (an empty list would make the other tests prove nothing)."""
    assert len(sessions()) >= 1 and len(standalone()) >= 5


def venv_path() -> str:
    """PATH with this installation's bin first: what `. .venv/bin/activate` gives the reader."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.mark.parametrize(("doc", "steps"), sessions(), ids=lambda v: v if isinstance(v, str) else "")
def test_console_sessions_run_as_shown(doc: str, steps: list[Step], dev_stack: DevStack, tmp_path: Path) -> None:
    env = clean_env(PATH=venv_path(), HOME=str(tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    documented_url = re.compile(r"http://127\.0\.0\.1:\d+")
    operation = ""
    for step in steps:
        command = documented_url.sub(dev_stack.url, step.command).replace("/tmp/srdemo", str(tmp_path / "srdemo"))
        if command.startswith("export "):
            for assignment in shlex.split(command)[1:]:
                name, _, value = assignment.partition("=")
                env[name] = value
                if name == "STRONGROOM_IDENTITY":
                    Path(value).parent.mkdir(parents=True, exist_ok=True)
            continue
        if re.fullmatch(r"[A-Z_]+=\S+", command):
            name, _, value = command.partition("=")
            env[name] = OPERATION_ID.sub(operation, value) if operation else value
            continue
        result = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        where = f"{doc}: $ {step.command}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        assert result.returncode == 0, where
        if "client create" in command and "--json" in command:
            operation = json.loads(result.stdout)["id"]
        for shown in step.shown:
            expected = OPERATION_ID.sub(operation, shown) if operation else shown
            if re.fullmatch(r"exit \d+", shown):
                assert expected in result.stdout.splitlines(), where
            elif shown.startswith("error: "):
                assert expected in result.stderr.splitlines(), where


def runnable(command: str, operation: str, scratch: Path) -> list[str]:
    """The argv to run for a documented command: optional parts dropped, placeholders and paths made real."""
    command = PLACEHOLDER.sub(operation, re.sub(r"\s*\[[^\]]*\]", "", command))
    argv = shlex.split(command)[1:]
    return [str(scratch) + arg if arg.startswith("/") else arg for arg in argv]


@pytest.mark.parametrize(("doc", "command"), standalone(), ids=lambda v: v)
def test_documented_commands_exit_as_documented(doc: str, command: str, dev_stack: DevStack, tmp_path: Path) -> None:
    argv = runnable(command, dev_stack.operation, tmp_path)
    if argv[0] in SERVES:
        build_parser().parse_args(argv)  # serves until stopped: its documented options must exist
        return
    scratch = dev_stack.home / "docs" / tmp_path.name  # below dev's project directory: admin commands find it
    scratch.mkdir(parents=True)
    env = clean_env(PATH=venv_path(), HOME=str(tmp_path), STRONGROOM_API_URL=dev_stack.url)
    if argv[0] == "init":  # the block around it configures a deployment: here, the settings dev chose
        env.update(connection.load(dev_stack.data_dir))
    result = subprocess.run(
        [sys.executable, "-m", "strongroom", *argv], cwd=scratch, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{doc}: {command}\n{result.stdout}\n{result.stderr}"
