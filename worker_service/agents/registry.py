"""Which agents exist and how each one is started.

Two kinds: the built-in ``privacy-audit`` (offline, this package) and command agents the operator configures in
``STRONGROOM_AGENTS``. A command's ``{prompt}`` and ``{input}`` placeholders are replaced inside single argv items,
and the command never goes through a shell, so input text cannot inject arguments or shell syntax. Each agent
names what its program needs besides ``/usr`` (``mounts``): its sandbox shows exactly that, read-only.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import ValidationFailed
from shared.settings import Settings
from worker_service.agents import privacy_audit
from worker_service.agents.workdir import Workdir

PRIVACY_AUDIT = "privacy-audit"


def _builtin() -> dict[str, tuple[list[str], list[str]]]:
    """The built-in agent: the base interpreter (not the worker's venv) running one standard-library file.

    ``-I -S``: isolated mode without site-packages, so neither the working directory, ``PYTHON*`` variables nor
    any installed package can change what runs; the sandbox then needs only the interpreter and that file.
    """
    python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    script = os.path.realpath(privacy_audit.__file__)
    return {PRIVACY_AUDIT: ([python, "-I", "-S", script], [sys.base_prefix, script])}


@dataclass(frozen=True)
class AgentSpec:
    name: str
    command: tuple[str, ...]
    mounts: tuple[Path, ...] = ()

    def argv(self, workdir: Workdir, agent_input: dict[str, Any]) -> list[str]:
        """The command with placeholders filled: ``{prompt}`` from input.prompt (or input.text), ``{input}`` is
        the path of ``input.json``."""
        prompt = agent_input.get("prompt", agent_input.get("text", ""))
        values = {"{prompt}": prompt if isinstance(prompt, str) else "", "{input}": str(workdir.input_file)}
        argv = []
        for item in self.command:
            for placeholder, value in values.items():
                item = item.replace(placeholder, value)
            argv.append(item)
        return argv


def agents(settings: Settings) -> dict[str, AgentSpec]:
    """Every runnable agent by name; operator commands may not shadow a built-in."""
    mounts = settings.agent_mounts()
    found = {
        name: AgentSpec(name, tuple(cmd), tuple(Path(m) for m in mounts.get(name, [])))
        for name, cmd in settings.agent_commands().items()
    }
    found.update(
        {name: AgentSpec(name, tuple(cmd), tuple(Path(m) for m in paths)) for name, (cmd, paths) in _builtin().items()}
    )
    return found


def resolve(settings: Settings, name: str) -> AgentSpec:
    try:
        return agents(settings)[name]
    except KeyError:
        raise ValidationFailed(f"unknown agent {name!r}", code="agent_unknown") from None
