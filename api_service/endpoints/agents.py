"""``GET /api/v1/agents``: the agents this server runs, what each does and what input it takes.

Signed like every ``/api/v1`` data endpoint (any valid signer may read it: it names server configuration, not
anyone's data), so the page and the CLI can offer a choice of agent and build the input form from the schema,
within the limits it also reports.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api_service.access import signed
from api_service.endpoints.common import json_response, services
from shared.agents import agent_list


@signed()  # verified, not recorded: server configuration, nobody's data
async def list_agents(request: Request) -> Response:
    return json_response(agent_list(services(request).settings).model_dump(mode="json"))
