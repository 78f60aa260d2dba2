"""A small MCP server whose tools get their credentials from Nexus.

    NEXUS_GATEWAY_URL=https://nexus.example.com NEXUS_AGENT_KEY=nxag_... \\
    NEXUS_AGENT_ID=crm-mcp MCP_AUTHORIZATION_SERVER=https://auth.example.com \\
    MCP_JWKS_URL=https://auth.example.com/jwks.json \\
    OPS_API_URL=https://ops.example.com CRM_API_URL=https://crm.example.com \\
    python examples/mcp_crm_server.py

Two tools over streamable HTTP at ``http://MCP_HOST:MCP_PORT/mcp``:

- ``glide`` acts on behalf of the calling user: the user's bearer token buys an
  on-behalf-of session on ``internal-ops`` with ``acme:gliding``, which Nexus
  grants only if the user holds that permission.
- ``find_contacts`` acts as the agent: an agent session on ``salesforce``
  limited to ``crm:contacts:read``. A call may name the connection in its
  request ``_meta`` (``dev.nexus/connection_id``), and Nexus then grants the
  session only if that connection is the calling user's own (the user's token
  goes with it, checked at the app's ``BACKEND_AUTH_URL``); ``glide`` takes none.

Other settings: ``MCP_HOST`` (127.0.0.1), ``MCP_PORT`` (8000), ``MCP_RESOURCE_URL``
(the endpoint's public URL; default from host and port), ``MCP_TOKEN_AUDIENCE``
(the ``aud`` users' tokens carry; default the resource URL) and ``LOG_LEVEL``
(INFO).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

import httpx
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from nexus_sdk import NexusClientOptions
from nexus_sdk.mcp import JwtTokenVerifier, NexusMCP, ProtectedResource, ToolCredentials

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


@dataclass(frozen=True)
class Settings:
    """Everything the server reads from its environment."""

    gateway_url: str
    agent_id: str
    host: str
    port: int
    resource_url: str
    authorization_server: str
    jwks_url: str
    token_audience: str
    ops_api_url: str
    crm_api_url: str
    log_level: LogLevel

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Settings:
        def required(name: str) -> str:
            value = env.get(name)
            if not value:
                raise SystemExit(f"{name} must be set (see the docstring of {__file__})")
            return value

        host = env.get("MCP_HOST", "127.0.0.1")
        port = int(env.get("MCP_PORT", "8000"))
        resource_url = env.get("MCP_RESOURCE_URL") or f"http://{host}:{port}/mcp"
        level = env.get("LOG_LEVEL", "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise SystemExit(
                f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {level}"
            )
        return cls(
            gateway_url=required("NEXUS_GATEWAY_URL"),
            agent_id=required("NEXUS_AGENT_ID"),
            host=host,
            port=port,
            resource_url=resource_url,
            authorization_server=required("MCP_AUTHORIZATION_SERVER"),
            jwks_url=required("MCP_JWKS_URL"),
            token_audience=env.get("MCP_TOKEN_AUDIENCE") or resource_url,
            ops_api_url=required("OPS_API_URL").rstrip("/"),
            crm_api_url=required("CRM_API_URL").rstrip("/"),
            log_level=cast(LogLevel, level),
        )


def create_server(settings: Settings) -> MCPServer[None]:
    """The MCP server with its two tools; nothing runs until ``run``."""
    nexus = NexusMCP(
        # The agent's key comes from NEXUS_AGENT_KEY.
        NexusClientOptions(gateway_url=settings.gateway_url),
        agent_id=settings.agent_id,
        resource=ProtectedResource(
            url=settings.resource_url, authorization_server=settings.authorization_server
        ),
        token_verifier=JwtTokenVerifier(
            issuer=settings.authorization_server,
            jwks_url=settings.jwks_url,
            audience=settings.token_audience,
        ),
    )

    @asynccontextmanager
    async def lifespan(server: MCPServer[None]) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await nexus.aclose()

    mcp: MCPServer[None] = MCPServer(
        "crm",
        token_verifier=nexus.token_verifier,
        auth=nexus.auth_settings,
        lifespan=lifespan,
        log_level=settings.log_level,
    )
    timeout = httpx.Timeout(10.0)

    @mcp.tool()
    @nexus.on_behalf_of_user(provider="internal-ops", scopes=["acme:gliding"])
    async def glide(customer_ids: list[str], credentials: ToolCredentials) -> dict[str, Any]:
        """Glide the given customers' accounts, as the calling user."""
        async with httpx.AsyncClient(auth=credentials.auth, timeout=timeout) as http:
            answer = await http.post(
                f"{settings.ops_api_url}/gliding",
                json={
                    "customer_ids": customer_ids,
                    # Nexus stamped these from the user's context; the API enforces them.
                    "tenant_id": credentials.tenant_id,
                    "clearance_level": credentials.clearance_level,
                },
            )
        if not answer.is_success:
            raise ToolError(f"the operations API answered HTTP {answer.status_code}")
        result: dict[str, Any] = answer.json()
        return result

    @mcp.tool()
    # A call may name the user's CRM connection in its _meta. The user's own
    # client writes _meta, so Nexus checks the connection is that user's.
    @nexus.as_agent(provider="salesforce", scopes=["crm:contacts:read"], connection_from_meta=True)
    async def find_contacts(query: str, credentials: ToolCredentials) -> list[dict[str, Any]]:
        """Find CRM contacts whose name matches the query."""
        async with httpx.AsyncClient(auth=credentials.auth, timeout=timeout) as http:
            answer = await http.get(f"{settings.crm_api_url}/contacts", params={"q": query})
        if not answer.is_success:
            raise ToolError(f"the CRM API answered HTTP {answer.status_code}")
        records: list[dict[str, Any]] = answer.json()["records"]
        return records

    return mcp


def main() -> None:
    settings = Settings.from_env(dict(os.environ))
    # Plain one-line records: the MCP SDK's default handler wraps long lines.
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    create_server(settings).run(transport="streamable-http", host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
