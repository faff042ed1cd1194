"""``GET /api/v1/agents``: what a grantee can start, in process against the real app and the session Valkey."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from api_service.openapi import openapi_document
from shared.errors import ConfigError
from shared.settings import Settings
from tests.unit.api.api_harness import ApiHarness

pytestmark = pytest.mark.integration

AGENTS = "/api/v1/agents"
GEMINI = {"command": ["gemini", "-p", "{prompt}", "-y"], "description": "Google's Gemini CLI, with your prompt"}


def listed(api: ApiHarness) -> dict[str, object]:
    with api.client() as client:
        response = api.signed(client, "GET", AGENTS)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    document = openapi_document()
    schema = document["paths"][AGENTS]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**schema, "components": document["components"]})
    assert not [e.message for e in validator.iter_errors(response.json())]
    body: dict[str, object] = response.json()
    return body


def test_lists_builtin_and_configured_agents_with_their_input_and_limits(redis_url: str) -> None:
    api = ApiHarness(
        redis_url,
        agents=json.dumps({"gemini": GEMINI, "plain": {"command": ["true"]}}),
        max_input_bytes=4096,
        artifact_retention_days=3,
    )
    body = listed(api)
    agents = {agent["name"]: agent for agent in body["agents"]}  # type: ignore[attr-defined]
    assert list(agents) == ["privacy-audit", "gemini", "plain"]
    audit = agents["privacy-audit"]
    assert audit["builtin"] is True and "personal data" in audit["description"]
    assert set(audit["input_schema"]["properties"]) == {"text", "files"}
    assert agents["gemini"]["description"] == GEMINI["description"] and agents["gemini"]["builtin"] is False
    assert "prompt" in agents["gemini"]["input_schema"]["properties"]
    assert "plain" in agents["plain"]["description"]  # a generated description, never empty
    assert body["limits"] == {"max_input_bytes": 4096, "max_retention_days": 3}


def test_a_configured_agent_can_be_started_and_an_unlisted_one_cannot(redis_url: str) -> None:
    api = ApiHarness(redis_url, agents=json.dumps({"gemini": GEMINI}))
    with api.client() as client:
        for agent, status in (("gemini", 202), ("privacy-audit", 202), ("nope", 422)):
            body = {"agent": agent, "input": {"text": "x"}, "encryption_public_key": api.public_key}
            assert api.signed(client, "POST", "/api/v1/operations", body=body).status_code == status


def test_unsigned_listing_is_refused(redis_url: str) -> None:
    api = ApiHarness(redis_url)
    with api.client() as client:
        response = client.get(AGENTS)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")


def test_the_document_describes_the_endpoint() -> None:
    operation = openapi_document()["paths"][AGENTS]["get"]
    assert operation["operationId"] == "listAgents"
    assert operation["security"] == [{"erc8128": []}]


def test_a_description_that_is_not_a_string_is_a_configuration_error(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="STRONGROOM_AGENTS"):
        Settings.from_env(
            {"REDIS_URL": redis_url, "STRONGROOM_AGENTS": json.dumps({"x": {"command": ["a"], "description": 3}})}
        )
