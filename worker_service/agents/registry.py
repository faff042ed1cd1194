"""Which agents exist and how each one is started.

Two kinds: the built-in ``privacy-audit`` (offline, this package) and command agents the operator configures in
``STRONGROOM_AGENTS``. A command's ``{prompt}`` and ``{input}`` placeholders are replaced inside single argv items,
and the command never goes through a shell, so input text cannot inject arguments or shell syntax.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from shared.errors import ValidationFailed
from shared.settings import Settings
from worker_service.agents.runner import Workdir

PRIVACY_AUDIT = "privacy-audit"
_BUILTIN: dict[str, list[str]] = {
    # -I: isolated mode, so the agent's working directory and PYTHON* variables cannot change what runs.
    PRIVACY_AUDIT: [sys.executable, "-I", "-m", "worker_service.agents.privacy_audit"],
}


@dataclass(frozen=True)
class AgentSpec:
    name: str
    command: tuple[str, ...]

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
    found = {name: AgentSpec(name, tuple(cmd)) for name, cmd in settings.agent_commands().items()}
    found.update({name: AgentSpec(name, tuple(cmd)) for name, cmd in _BUILTIN.items()})
    return found


def resolve(settings: Settings, name: str) -> AgentSpec:
    try:
        return agents(settings)[name]
    except KeyError:
        raise ValidationFailed(f"unknown agent {name!r}", code="agent_unknown") from None
