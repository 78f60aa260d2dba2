"""Who may call which public method, and how the gateway establishes the caller.

Admin keys (``X-API-Key``) reach everything except what is public. Agents
present their own key as ``Authorization: Bearer <agent key>``; the policy
service, which holds only key digests, says which agent that is, and the
answer is remembered until the agent changes (``agent_keys``). Agents reach
only the methods an agent needs.
"""

from __future__ import annotations

from collections.abc import Mapping

from nexus.gateway.v1 import gateway_pb2
from nexus_common import (
    API_KEY_HEADER,
    AUTHORIZATION_HEADER,
    ApiKeySet,
    Caller,
    Unauthenticated,
)

from .agent_keys import AgentKeys

__all__ = ["AGENT_METHODS", "PUBLIC_METHODS", "GatewayAuthenticator"]


def _methods(service: str, *names: str) -> frozenset[str]:
    full_name = gateway_pb2.DESCRIPTOR.services_by_name[service].full_name
    return frozenset(f"/{full_name}/{name}" for name in names)


AGENT_METHODS = _methods("ConnectionService", "GetToken", "RefreshConnection") | _methods(
    "SessionService",
    "CreateAgentSession",
    "CreateOboSession",
    "CloseAgentSession",
    "IntrospectSession",
)
PUBLIC_METHODS = _methods("SessionService", "GetJwks")

_BEARER = "bearer "


class GatewayAuthenticator:
    def __init__(self, admin_keys: ApiKeySet, agent_keys: AgentKeys) -> None:
        self._admin_keys = admin_keys
        self._agent_keys = agent_keys

    async def __call__(
        self, method: str, metadata: Mapping[str, str], peer: str | None = None
    ) -> Caller:
        if method in PUBLIC_METHODS:
            return Caller("anonymous", "-")
        authorization = metadata.get(AUTHORIZATION_HEADER, "")
        if method in AGENT_METHODS and API_KEY_HEADER not in metadata and authorization:
            return await self._agent(authorization)
        if authorization and API_KEY_HEADER not in metadata:
            raise Unauthenticated("this method needs an admin key (X-API-Key), not an agent key")
        return Caller("admin", self._admin_keys.match(metadata.get(API_KEY_HEADER)))

    async def _agent(self, authorization: str) -> Caller:
        if authorization[: len(_BEARER)].lower() != _BEARER:
            raise Unauthenticated("send the agent key as 'Authorization: Bearer <agent key>'")
        key = authorization[len(_BEARER) :].strip()
        return Caller("agent", await self._agent_keys.agent_of(key))
