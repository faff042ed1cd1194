"""``GET /api/v1/grant``: what the signer may do here, and how much of each quota is used.

Signed and not recorded (like ``/agents``): it tells a caller about themselves. An address without a grant gets
200 with ``status: "none"`` rather than 403, so a client can explain why a create would be refused.
"""

from __future__ import annotations

import dataclasses

from starlette.requests import Request
from starlette.responses import Response

from api_service.access import signed, signer
from api_service.endpoints.common import blocking, json_response, services
from shared.models import GrantView, Quotas, QuotaUsage, utcnow


@signed()
async def get_grant(request: Request) -> Response:
    svc = services(request)
    address = signer(request).address.lower()
    now = utcnow()
    grant = svc.grants.lookup(address)
    if grant is None:
        view = GrantView(
            address=address,
            source=svc.grants.name,
            status="none",
            agents=[],
            expires_at=None,
            max_retention_days=None,
            quotas=Quotas(),
        )
        return json_response(view.model_dump(mode="json"))
    usage = None
    if svc.quotas is not None:
        counted = await blocking(svc.quotas.usage, address, now)
        usage = QuotaUsage(**dataclasses.asdict(counted))
    view = GrantView(
        address=address,
        source=svc.grants.name,
        status="expired" if grant.expired(now) else "active",
        agents=list(grant.agents),
        expires_at=grant.expires_at,
        max_retention_days=grant.max_retention_days,
        quotas=grant.quotas,
        usage=usage,
    )
    return json_response(view.model_dump(mode="json"))
