"""Who may call which public method, and how the gateway establishes the caller.

Admin keys (``X-API-Key``) reach everything except what is public. Agents
present their own key as ``Authorization: Bearer <agent key>``; the policy
service, which holds only key digests, says which agent that is, and the
answer is remembered until the agent changes (``agent_keys``). Agents reach
only the methods an agent needs.

A resource-server key (``X-API-Key`` too, from ``NEXUS_RESOURCE_SERVER_KEYS``)
reaches introspection only; the broker then reports active only the session
tokens for its provider (RFC 7662 §2.1).
"""

from __future__ import annotations

from collections.abc import Mapping

from nexus.gateway.v1 import gateway_pb2
from nexus_common import (
    API_KEY_HEADER,
    AUTHORIZATION_HEADER,
    ApiKeySet,
    Caller,
    CallerNotAllowed,
    Unauthenticated,
)

from .agent_keys import AgentKeys

__all__ = ["AGENT_METHODS", "PUBLIC_METHODS", "RESOURCE_SERVER_METHODS", "GatewayAuthenticator"]


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
RESOURCE_SERVER_METHODS = _methods("SessionService", "IntrospectSession")

_BEARER = "bearer "


class GatewayAuthenticator:
    def __init__(
        self, admin_keys: ApiKeySet, agent_keys: AgentKeys, resource_server_keys: ApiKeySet
    ) -> None:
        self._admin_keys = admin_keys
        self._agent_keys = agent_keys
        self._resource_server_keys = resource_server_keys

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
        return self._api_key(method, metadata.get(API_KEY_HEADER))

    def _api_key(self, method: str, presented: str | None) -> Caller:
        admin = self._admin_keys.find(presented)
        if admin is not None:
            return Caller("admin", admin)
        provider = self._resource_server_keys.find(presented)
        if provider is None:
            raise Unauthenticated("a valid API key is required")
        if method not in RESOURCE_SERVER_METHODS:
            raise CallerNotAllowed("a resource-server key may only introspect session tokens")
        return Caller("resource_server", provider)

    async def _agent(self, authorization: str) -> Caller:
        if authorization[: len(_BEARER)].lower() != _BEARER:
            raise Unauthenticated("send the agent key as 'Authorization: Bearer <agent key>'")
        key = authorization[len(_BEARER) :].strip()
        return Caller("agent", await self._agent_keys.agent_of(key))
