"""The Nexus Python SDK: credentials and scoped sessions for agents, over the gateway's REST API.

    from nexus_sdk import NexusClient, NexusClientOptions

    client = NexusClient(NexusClientOptions(gateway_url="https://nexus-gateway.example.com"))
    token = client.get_token_by_connection_id("conn_01HXYZ...")
    if token.strategy["type"] == "oauth2":
        headers["Authorization"] = f"Bearer {token.credentials['access_token']}"

The caller's key comes from ``NexusClientOptions`` or, when none is given, from
``NEXUS_AGENT_KEY`` (an agent) or ``NEXUS_API_KEY`` (an application backend).
``AsyncNexusClient`` has the same methods for asyncio. Every failure is a
``NexusError``; branch on its class or on its stable ``reason``.
"""

from __future__ import annotations

from ._apply import AppliedCredentials, UnsupportedStrategy, apply_credentials
from ._client import AsyncNexusClient, NexusClient
from ._errors import (
    NexusAuthError,
    NexusConflictError,
    NexusError,
    NexusInvalidRequestError,
    NexusNotFoundError,
    NexusUnavailableError,
    NexusUnexpectedError,
)
from ._models import AgentSession, TokenPayload
from ._options import NexusClientOptions
from ._rfc7662 import Introspection

__all__ = [
    "AgentSession",
    "AppliedCredentials",
    "AsyncNexusClient",
    "Introspection",
    "NexusAuthError",
    "NexusClient",
    "NexusClientOptions",
    "NexusConflictError",
    "NexusError",
    "NexusInvalidRequestError",
    "NexusNotFoundError",
    "NexusUnavailableError",
    "NexusUnexpectedError",
    "TokenPayload",
    "UnsupportedStrategy",
    "apply_credentials",
]
