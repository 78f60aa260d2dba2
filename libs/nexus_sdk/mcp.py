"""Nexus credentials for tools of MCP servers built with the official ``mcp`` SDK.

    from mcp.server.mcpserver import MCPServer
    from nexus_sdk import NexusClientOptions
    from nexus_sdk.mcp import JwtTokenVerifier, NexusMCP, ProtectedResource, ToolCredentials

    nexus = NexusMCP(
        NexusClientOptions(gateway_url="https://nexus.example.com"),  # key: NEXUS_AGENT_KEY
        agent_id="crm-mcp",
        resource=ProtectedResource(
            url="https://mcp.example.com/mcp", authorization_server="https://auth.example.com"
        ),
        token_verifier=JwtTokenVerifier(
            issuer="https://auth.example.com",
            jwks_url="https://auth.example.com/jwks.json",
            audience="https://mcp.example.com/mcp",
        ),
    )
    mcp = MCPServer("crm", token_verifier=nexus.token_verifier, auth=nexus.auth_settings)

    @mcp.tool()
    @nexus.on_behalf_of_user(provider="internal-ops", scopes=["acme:gliding"])
    async def glide(customer_ids: list[str], credentials: ToolCredentials) -> dict[str, str]:
        async with httpx.AsyncClient(auth=credentials.auth) as http:
            ...

On behalf of the user, the MCP request's bearer token becomes the
``user_context_token`` of an OBO session; as the agent, the server's agent key
opens an agent session. Either way the session is closed when the call ends.
Requests without a valid user token get 401 with ``WWW-Authenticate`` pointing
at the RFC 9728 metadata this module has the SDK serve. Needs the ``mcp``
extra: ``pip install 'nexus-sdk[mcp]'``.
"""

from __future__ import annotations

try:
    import mcp.server.mcpserver  # noqa: F401
except ImportError as missing:
    raise ImportError(
        "nexus_sdk.mcp needs the MCP Python SDK 2.x (mcp.server.mcpserver): "
        "pip install 'nexus-sdk[mcp]'"
    ) from missing

from ._mcp_auth import JwtTokenVerifier, ProtectedResource
from ._mcp_credentials import ToolCredentials
from ._mcp_tools import CONNECTION_META_KEY, DEFAULT_SESSION_TTL, NexusMCP

__all__ = [
    "CONNECTION_META_KEY",
    "DEFAULT_SESSION_TTL",
    "JwtTokenVerifier",
    "NexusMCP",
    "ProtectedResource",
    "ToolCredentials",
]
