"""The MCP resource server's defaults (nexus_sdk.mcp): a token verifier that
does not say it checks the audience gets tokens held to this server's URL by
the mcp middleware, and the JWK Set is read no further than its cap. Served
by the real mcp Starlette app; tokens from the real customer backend."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import MCPServer
from nexus_sdk import NexusClientOptions
from nexus_sdk.mcp import JwtTokenVerifier, NexusMCP, ProtectedResource
from starlette.testclient import TestClient

from tests.support.backend_auth_server import BackendAuthServer
from tests.support.loopback import LoopbackServer, owner

RESOURCE = "http://127.0.0.1:8000/mcp"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}
STREAMABLE = {"Accept": "application/json, text/event-stream"}


class IntrospectingVerifier:
    """A deployer's verifier for opaque tokens (as RFC 7662 introspection
    answers): it knows a token is valid and for which resource, and does not
    itself compare that resource with this server's."""

    def __init__(self, resources: dict[str, str]) -> None:
        self.resources = resources

    async def verify_token(self, token: str) -> AccessToken | None:
        resource = self.resources.get(token)
        if resource is None:
            return None
        return AccessToken(
            token=token,
            client_id="client",
            scopes=[],
            expires_at=int(time.time()) + 300,
            subject="sarah",
            resource=resource,
        )


def served(verifier: object) -> Iterator[TestClient]:
    nexus = NexusMCP(
        NexusClientOptions(gateway_url="http://127.0.0.1:9", agent_key="nxag_k"),
        agent_id="crm-mcp",
        resource=ProtectedResource(url=RESOURCE, authorization_server="https://auth.example.com"),
        token_verifier=verifier,  # type: ignore[arg-type]
    )
    mcp: MCPServer[None] = MCPServer(
        "crm", token_verifier=nexus.token_verifier, auth=nexus.auth_settings
    )
    with TestClient(mcp.streamable_http_app(), base_url="http://127.0.0.1:8000") as client:
        yield client


def initialize(client: TestClient, token: str) -> int:
    headers = {**STREAMABLE, "Authorization": f"Bearer {token}"}
    return client.post("/mcp", json=INITIALIZE, headers=headers).status_code


def test_a_verifier_not_checking_the_audience_gets_no_token_for_another_resource() -> None:
    verifier = IntrospectingVerifier(
        {"for-us": RESOURCE, "for-another-server": "https://other.example.com/mcp"}
    )
    for client in served(verifier):
        assert initialize(client, "for-another-server") == 401
        assert initialize(client, "for-us") == 200


def test_the_jwt_verifier_checks_the_audience_itself(backend: BackendAuthServer) -> None:
    """Its tokens carry no RFC 8707 resource: the audience is what it checks."""
    verifier = JwtTokenVerifier(
        issuer=backend.issuer, jwks_url=backend.jwks_url, audience=backend.audience
    )
    for client in served(verifier):
        assert initialize(client, backend.issue_token("sarah", permissions=[])) == 200


class _Published(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server = owner(self)
        server.requests += 1
        body: bytes = server.body
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class JwkSetEndpoint(LoopbackServer):
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.requests = 0
        super().__init__(_Published)


@pytest.mark.parametrize(("padding", "accepted"), [(1024, True), (300 * 1024, False)])
async def test_a_jwk_set_over_the_cap_is_refused(
    backend: BackendAuthServer, padding: int, accepted: bool
) -> None:
    """The real keys, padded: under the cap they verify, over it nothing does."""
    async with httpx.AsyncClient(timeout=10) as http:
        published = (await http.get(backend.jwks_url)).json()
    body = json.dumps({**published, "padding": "x" * padding}).encode()
    token = backend.issue_token("sarah", permissions=[])
    with JwkSetEndpoint(body) as endpoint:
        verifier = JwtTokenVerifier(
            issuer=backend.issuer, jwks_url=endpoint.url, audience=backend.audience
        )
        assert (await verifier.verify_token(token) is not None) is accepted
        assert endpoint.requests == 1
