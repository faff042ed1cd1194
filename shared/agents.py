"""The agents a server offers, as a grantee sees them: name, description and the input each one takes.

One catalogue for the API (``GET /api/v1/agents``, and the check that an operation names a known agent) and for
anyone else who needs the list. How an agent is *started* is the worker's business (``worker_service.agents``);
this module only describes. The input shape is a JSON Schema of the operation's ``input`` object, so a page or
a client can build a form from it without knowing the agent.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.settings import Settings

PRIVACY_AUDIT = "privacy-audit"

_FILES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "input files by name (an artifact-style name), contents base64; the agent finds them in in/",
    "additionalProperties": {"type": "string", "contentEncoding": "base64"},
}

_BUILTIN: dict[str, tuple[str, dict[str, Any]]] = {
    PRIVACY_AUDIT: (
        "Finds personal data and secrets (e-mail addresses, phone numbers, card numbers, IP addresses, keys) in "
        "text and files, offline; writes a masked report (privacy_audit.md) and recommendations.json.",
        {
            "type": "object",
            "properties": {
                "text": {"type": "string", "description": "text to audit"},
                "files": _FILES_SCHEMA,
            },
        },
    ),
}

_COMMAND_INPUT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string", "description": "the prompt, passed to the command as {prompt}"},
        "text": {"type": "string", "description": "used as the prompt when prompt is absent"},
        "files": _FILES_SCHEMA,
    },
}


class AgentInfo(BaseModel):
    """One agent as ``GET /api/v1/agents`` lists it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    builtin: bool = Field(description="shipped with strongroom (true) or a command the operator configured")
    description: str
    input_schema: dict[str, Any] = Field(description="JSON Schema of the operation's `input` object")


class AgentLimits(BaseModel):
    """What bounds a new operation on this server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_input_bytes: int = Field(description="largest accepted create request body, bytes (input files are base64)")
    max_retention_days: int = Field(description="largest `retention_days`; also the default")


class AgentList(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    agents: list[AgentInfo]
    limits: AgentLimits


def catalog(settings: Settings) -> list[AgentInfo]:
    """Every agent an operation may name, built-ins first; a configured command never shadows a built-in."""
    found = [
        AgentInfo(name=name, builtin=True, description=description, input_schema=schema)
        for name, (description, schema) in _BUILTIN.items()
    ]
    descriptions = settings.agent_descriptions()
    for name in sorted(settings.agent_commands()):
        if name in _BUILTIN:
            continue
        description = descriptions.get(name) or f"a command agent configured by the operator ({name})"
        found.append(AgentInfo(name=name, builtin=False, description=description, input_schema=_COMMAND_INPUT))
    return found


def agent_names(settings: Settings) -> frozenset[str]:
    return frozenset(agent.name for agent in catalog(settings))


def agent_list(settings: Settings) -> AgentList:
    limits = AgentLimits(max_input_bytes=settings.max_input_bytes, max_retention_days=settings.artifact_retention_days)
    return AgentList(agents=catalog(settings), limits=limits)
