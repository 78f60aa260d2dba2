"""``nexus_sdk.mcp`` through the real stack: examples/mcp_crm_server.py runs as a
subprocess, and the official ``mcp`` Python client and the MCP Inspector CLI
call its tools over streamable HTTP. Behind it: Envoy, the three services on
PostgreSQL, the real OAuth server from npm (Salesforce), the real customer
backend (whose user tokens the MCP server accepts and Nexus validates), and a
real upstream API on loopback that records the credential each tool sent."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import jwt
import nexus_sdk.mcp
import pytest
from mcp.types import CallToolResult, TextContent
from nexus_sdk import AgentSession, NexusClientOptions
from nexus_sdk._mcp_credentials import session_credentials
from nexus_sdk.mcp import JwtTokenVerifier, NexusMCP, ProtectedResource, ToolCredentials

from tests.e2e.agent_guide import Guide
from tests.e2e.test_rest_sessions import ok, verify
from tests.e2e.test_sdk import userinfo_status
from tests.support.backend_auth_server import BackendAuthServer, start_backend_auth_server
from tests.support.loopback import LoopbackServer, owner
from tests.support.mcp_clients import Exchanged, inspector, python_client
from tests.support.mcp_example import ExampleServer, start_example_server
from tests.support.mcp_upstream import FAIL, HOLD, UpstreamApi
from tests.support.node_server import REPO_ROOT
from tests.support.oidc_server import OidcServer, stats
from tools.devstack import Stack

AGENT_ID = "crm-mcp"
CONNECTION_META_KEY = "dev.nexus/connection_id"
JWT = re.compile(r"eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]+")


class Secrets:
    """Every token this module saw, to look for in what the clients and the server wrote."""

    def __init__(self) -> None:
        self.values: set[str] = set()

    def add(self, *values: str) -> None:
        self.values.update(value for value in values if value)


@pytest.fixture(scope="module")
def secrets() -> Secrets:
    return Secrets()


@pytest.fixture(scope="module")
def exchanged() -> Exchanged:
    """Every raw body the MCP clients exchanged in this module, and the Inspector's output."""
    return Exchanged()


@pytest.fixture(scope="module")
def agent_key(stack: Stack, guide: Guide, idp: OidcServer, secrets: Secrets) -> str:
    """The MCP server's agent, and a Salesforce that narrows tokens and may revoke them,
    so the provider token a tool sends carries only the tool's scope."""
    admin = {"X-API-Key": stack.admin_key}
    with httpx.Client(base_url=stack.rest_url, headers=admin, timeout=30) as rest:
        registered = ok(
            rest.post(
                "/admin/v1/agents",
                json={
                    "agent_id": AGENT_ID,
                    "allowed_scopes": ["crm:contacts:read", "acme:gliding"],
                },
            )
        )
        providers = ok(rest.get("/v1/providers"))["providers"]
        salesforce = next(p for p in providers if p["name"] == "salesforce")
        ok(
            rest.patch(
                f"/v1/providers/{salesforce['id']}",
                json={
                    "revocation_url": f"{idp.issuer}/revoke",
                    # A new endpoint gets the secret only when it is given again.
                    "client_secret": "SF_CLIENT_SECRET",
                    "params": {
                        "skip_scope_on_exchange": True,
                        "supports_scope_narrowing": True,
                        "revoke_narrowed_tokens": True,
                    },
                },
            )
        )
        # A new revocation endpoint on a provider whose connections hold tokens
        # waits for an admin's confirmation before anything is sent there.
        ok(rest.post(f"/v1/providers/{salesforce['id']}:confirmEndpoints"))
    key = str(registered["agent_key"])
    secrets.add(key, guide.crm_key, guide.ops_key)
    return key


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamApi]:
    with UpstreamApi() as api:
        yield api


@pytest.fixture(scope="module")
def server(
    stack: Stack, backend: BackendAuthServer, agent_key: str, upstream: UpstreamApi
) -> Iterator[ExampleServer]:
    env = {
        "NEXUS_GATEWAY_URL": stack.rest_url,
        "NEXUS_AGENT_KEY": agent_key,
        "NEXUS_AGENT_ID": AGENT_ID,
        "MCP_AUTHORIZATION_SERVER": backend.issuer,
        "MCP_JWKS_URL": backend.jwks_url,
        # The backend's tokens name Nexus's audience; a deployment's would name the MCP server.
        "MCP_TOKEN_AUDIENCE": backend.audience,
        "OPS_API_URL": upstream.url,
        "CRM_API_URL": upstream.url,
    }
    with start_example_server(env) as running:
        yield running


def sarah(backend: BackendAuthServer, secrets: Secrets) -> str:
    """The guide's user: the app's backend says she owns the workspace user_sarah."""
    token = backend.issue_token(
        "sarah",
        permissions=["acme:gliding"],
        tenant_id="acme-eu",
        clearance_level="secret",
        workspaces=["user_sarah"],
    )
    secrets.add(token)
    return token


def bob(backend: BackendAuthServer, secrets: Secrets) -> str:
    """Another signed-in user of the same MCP server, who owns user_bob only."""
    token = backend.issue_token(
        "bob", permissions=["acme:gliding"], tenant_id="acme-eu", workspaces=["user_bob"]
    )
    secrets.add(token)
    return token


def text(result: CallToolResult) -> str:
    return " ".join(part.text for part in result.content if isinstance(part, TextContent))


def idp_claims(idp: OidcServer, token: str) -> dict[str, Any]:
    """A provider token's claims, verified with the provider's published keys."""
    jwks_uri = httpx.get(idp.discovery_url, timeout=10).json()["jwks_uri"]
    keys = jwt.PyJWKSet.from_dict(httpx.get(jwks_uri, timeout=10).json())
    kid = jwt.get_unverified_header(token)["kid"]
    claims: dict[str, Any] = jwt.decode(
        token,
        next(k for k in keys.keys if k.key_id == kid),
        algorithms=["RS256"],
        issuer=idp.issuer,
        options={"verify_aud": False},
    )
    return claims


def introspect(stack: Stack, agent_key: str, token: str) -> dict[str, Any]:
    answer = httpx.post(
        f"{stack.rest_url}/v1/agent-sessions:introspect",
        headers={"Authorization": f"Bearer {agent_key}"},
        json={"token": token},
        timeout=10,
    )
    result: dict[str, Any] = ok(answer)
    return result


# The two clients list and call the tools


async def test_the_python_client_lists_the_tools_without_their_credentials_parameter(
    server: ExampleServer, backend: BackendAuthServer, secrets: Secrets, exchanged: Exchanged
) -> None:
    async with python_client(server.url, sarah(backend, secrets), exchanged) as client:
        listed = await client.list_tools()
    tools = {tool.name: tool for tool in listed.tools}
    assert sorted(tools) == ["find_contacts", "glide"]
    assert list(tools["glide"].input_schema["properties"]) == ["customer_ids"]
    assert list(tools["find_contacts"].input_schema["properties"]) == ["query"]
    assert tools["glide"].description == "Glide the given customers' accounts, as the calling user."


async def test_an_obo_tool_sends_a_session_token_limited_to_its_scope_and_closes_it(
    server: ExampleServer,
    stack: Stack,
    backend: BackendAuthServer,
    upstream: UpstreamApi,
    agent_key: str,
    secrets: Secrets,
    exchanged: Exchanged,
) -> None:
    async with python_client(server.url, sarah(backend, secrets), exchanged) as client:
        result = await client.call_tool("glide", {"customer_ids": ["c-1", "c-2"]})

    assert not result.is_error, text(result)
    assert result.structured_content == {
        "glided": ["c-1", "c-2"],
        "tenant_id": "acme-eu",
        "clearance_level": "secret",
    }
    sent = upstream.last("/gliding")
    secrets.add(sent.bearer)
    claims = verify(stack, sent.bearer, "internal-ops")
    assert claims["scope"] == "acme:gliding" and claims["sub"] == "sarah"
    assert claims["act"] == {"sub": AGENT_ID}
    assert introspect(stack, agent_key, sent.bearer) == {"active": False}


async def test_an_agent_tool_sends_a_provider_token_limited_to_its_scope_and_closes_it(
    server: ExampleServer,
    idp: OidcServer,
    backend: BackendAuthServer,
    upstream: UpstreamApi,
    secrets: Secrets,
    exchanged: Exchanged,
) -> None:
    async with python_client(server.url, sarah(backend, secrets), exchanged) as client:
        result = await client.call_tool("find_contacts", {"query": "Ada"})

    assert not result.is_error, text(result)
    assert result.structured_content == {
        "result": [{"name": "Ada Example", "email": "x@example.com"}]
    }
    sent = upstream.last("/contacts")
    secrets.add(sent.bearer)
    assert idp_claims(idp, sent.bearer)["scope"] == "crm:contacts:read"
    # The session closed, and with it this provider's narrowed token was revoked.
    assert sent.bearer in stats(idp)["revoked"]  # type: ignore[operator]
    assert userinfo_status(idp, sent.bearer) == 401


async def test_a_call_can_name_the_connection_in_its_meta(
    server: ExampleServer,
    guide: Guide,
    backend: BackendAuthServer,
    idp: OidcServer,
    upstream: UpstreamApi,
    secrets: Secrets,
    exchanged: Exchanged,
) -> None:
    async with python_client(server.url, sarah(backend, secrets), exchanged) as client:
        named = await client.call_tool(
            "find_contacts", {"query": "Grace"}, meta={CONNECTION_META_KEY: guide.connection_id}
        )
        sent = upstream.last("/contacts")
        unknown = await client.call_tool(
            "find_contacts",
            {"query": "Grace"},
            meta={CONNECTION_META_KEY: "00000000-0000-4000-8000-000000000000"},
        )
    secrets.add(sent.bearer)
    assert not named.is_error, text(named)
    assert idp_claims(idp, sent.bearer)["scope"] == "crm:contacts:read"
    assert unknown.is_error and "CONNECTION_NOT_FOUND" in text(unknown)
    assert upstream.last("/contacts") == sent


async def test_a_user_naming_another_users_connection_gets_no_credential_from_it(
    server: ExampleServer,
    stack: Stack,
    guide: Guide,
    backend: BackendAuthServer,
    upstream: UpstreamApi,
    secrets: Secrets,
    exchanged: Exchanged,
    tmp_path: Path,
) -> None:
    """The user's own client writes _meta: Bob, signed in to the same server,
    names Sarah's connection to find_contacts (declared connection_from_meta).
    Nexus checks the connection against Bob's own, so the tool never runs with
    Sarah's CRM token, through the official client or the Inspector."""
    before, sent_before = sessions_of(stack, "session.granted"), len(upstream.requests)
    async with python_client(server.url, bob(backend, secrets), exchanged) as client:
        refused = await client.call_tool(
            "find_contacts", {"query": "Grace"}, meta={CONNECTION_META_KEY: guide.connection_id}
        )
    by_inspector = inspector(
        server.url,
        bob(backend, secrets),
        [
            "--method",
            "tools/call",
            "--tool-name",
            "find_contacts",
            "--tool-arg",
            "query=Grace",
            "--tool-metadata",
            f"{CONNECTION_META_KEY}={guide.connection_id}",
        ],
        exchanged,
        tmp_path,
        tool_error=True,
    )
    assert refused.is_error, text(refused)
    for message in (text(refused), json.dumps(by_inspector)):
        assert "CONNECTION_NOT_FOUND" in message and "user_sarah" not in message
    assert sessions_of(stack, "session.granted") == before
    assert len(upstream.requests) == sent_before


async def test_a_tool_not_declared_to_take_a_connection_refuses_one_named_in_meta(
    server: ExampleServer,
    stack: Stack,
    guide: Guide,
    backend: BackendAuthServer,
    upstream: UpstreamApi,
    secrets: Secrets,
    exchanged: Exchanged,
) -> None:
    # glide is declared without connection_from_meta: a caller cannot steer it.
    before, sent_before = sessions_of(stack, "session.granted"), len(upstream.requests)
    async with python_client(server.url, sarah(backend, secrets), exchanged) as client:
        refused = await client.call_tool(
            "glide", {"customer_ids": ["c-1"]}, meta={CONNECTION_META_KEY: guide.connection_id}
        )
    assert refused.is_error
    assert "glide does not let a call choose its connection" in text(refused)
    assert sessions_of(stack, "session.granted") == before
    assert len(upstream.requests) == sent_before


def test_the_inspector_cli_lists_and_calls_the_tools(
    server: ExampleServer,
    stack: Stack,
    backend: BackendAuthServer,
    upstream: UpstreamApi,
    agent_key: str,
    secrets: Secrets,
    exchanged: Exchanged,
    tmp_path: Path,
) -> None:
    token = sarah(backend, secrets)
    listed = inspector(server.url, token, ["--method", "tools/list"], exchanged, tmp_path)
    glided = inspector(
        server.url,
        token,
        ["--method", "tools/call", "--tool-name", "glide", "--tool-arg", 'customer_ids=["c-7"]'],
        exchanged,
        tmp_path,
    )
    sent = upstream.last("/gliding")
    found = inspector(
        server.url,
        token,
        ["--method", "tools/call", "--tool-name", "find_contacts", "--tool-arg", "query=Linus"],
        exchanged,
        tmp_path,
    )

    assert sorted(tool["name"] for tool in listed["tools"]) == ["find_contacts", "glide"]
    assert not glided.get("isError") and glided["structuredContent"]["glided"] == ["c-7"]
    secrets.add(sent.bearer)
    assert verify(stack, sent.bearer, "internal-ops")["scope"] == "acme:gliding"
    assert introspect(stack, agent_key, sent.bearer) == {"active": False}
    assert not found.get("isError") and found["structuredContent"]["result"][0]["name"] == (
        "Linus Example"
    )
    secrets.add(upstream.last("/contacts").bearer)


# Refusals and failures


async def test_a_user_without_the_permission_gets_a_tool_error_naming_it(
    server: ExampleServer,
    backend: BackendAuthServer,
    upstream: UpstreamApi,
    secrets: Secrets,
    exchanged: Exchanged,
) -> None:
    bob = backend.issue_token("bob", permissions=["acme:flaring"])
    secrets.add(bob)
    before = len(upstream.requests)
    async with python_client(server.url, bob, exchanged) as client:
        result = await client.call_tool("glide", {"customer_ids": ["c-1"]})
    assert result.is_error
    assert "USER_PERMISSION_MISSING" in text(result)
    assert "the user does not have acme:gliding among their permissions" in text(result)
    assert len(upstream.requests) == before


async def test_the_session_is_closed_when_the_tool_raises(
    server: ExampleServer,
    stack: Stack,
    idp: OidcServer,
    backend: BackendAuthServer,
    upstream: UpstreamApi,
    agent_key: str,
    secrets: Secrets,
    exchanged: Exchanged,
) -> None:
    async with python_client(server.url, sarah(backend, secrets), exchanged) as client:
        glided = await client.call_tool("glide", {"customer_ids": ["c-1", FAIL]})
        session_token = upstream.last("/gliding").bearer
        found = await client.call_tool("find_contacts", {"query": FAIL})
        provider_token = upstream.last("/contacts").bearer
    secrets.add(session_token, provider_token)

    assert glided.is_error and "the operations API answered HTTP 500" in text(glided)
    assert verify(stack, session_token, "internal-ops")["scope"] == "acme:gliding"
    assert introspect(stack, agent_key, session_token) == {"active": False}
    assert found.is_error and "the CRM API answered HTTP 500" in text(found)
    assert userinfo_status(idp, provider_token) == 401


# The resource server


def test_a_request_without_a_user_token_gets_401_pointing_at_the_metadata(
    server: ExampleServer, backend: BackendAuthServer
) -> None:
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    refused = httpx.post(server.url, json=initialize, headers=headers, timeout=10)

    assert refused.status_code == 401
    challenge = refused.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert re.search(r'resource_metadata="([^"]+)"', challenge)[1] == server.metadata_url  # type: ignore[index]
    metadata = httpx.get(server.metadata_url, timeout=10)
    assert metadata.status_code == 200
    assert metadata.json() == {
        "resource": server.url,
        "authorization_servers": [backend.issuer],
        "bearer_methods_supported": ["header"],
    }


@pytest.mark.parametrize(
    "kind", ["forged", "expired", "another-audience", "another-issuer", "hs256", "not-a-jwt"]
)
def test_a_token_the_resource_server_cannot_verify_gets_401(
    kind: str, server: ExampleServer, backend: BackendAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "another-audience":
        monkeypatch.setattr(backend, "audience", "https://another-resource.example.com")
    if kind == "another-issuer":
        with start_backend_auth_server() as stranger:
            token = stranger.issue_token("sarah", permissions=["acme:gliding"])
    else:
        token = {
            "forged": lambda: backend.forge_token("sarah", permissions=["acme:gliding"]),
            "expired": lambda: backend.issue_token(
                "sarah", permissions=["acme:gliding"], expires_in=-120
            ),
            "another-audience": lambda: backend.issue_token("sarah", permissions=["acme:gliding"]),
            # Algorithm confusion: an HMAC "signature" keyed with something public.
            "hs256": lambda: jwt.encode(
                {"iss": backend.issuer, "aud": backend.audience, "sub": "sarah", "exp": 2**31},
                backend.jwks_url.ljust(40, "#"),
                algorithm="HS256",
            ),
            "not-a-jwt": lambda: "opaque-token",
        }[kind]()
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
    }
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    refused = httpx.post(server.url, json=call, headers=headers, timeout=10)
    assert refused.status_code == 401
    assert f'resource_metadata="{server.metadata_url}"' in refused.headers["WWW-Authenticate"]


# No token anywhere


async def test_no_token_appears_in_any_mcp_message_or_server_log_line(
    server: ExampleServer,
    backend: BackendAuthServer,
    upstream: UpstreamApi,
    secrets: Secrets,
    exchanged: Exchanged,
    tmp_path: Path,
) -> None:
    token = sarah(backend, secrets)
    bob = backend.issue_token("bob", permissions=[])
    secrets.add(bob)
    async with python_client(server.url, token, exchanged) as client:
        await client.list_tools()
        await client.call_tool("glide", {"customer_ids": ["c-3"]})
        await client.call_tool("glide", {"customer_ids": [FAIL]})
        await client.call_tool("find_contacts", {"query": "Ada"})
    async with python_client(server.url, bob, exchanged) as client:
        await client.call_tool("glide", {"customer_ids": ["c-3"]})
    inspector(
        server.url,
        token,
        ["--method", "tools/call", "--tool-name", "glide", "--tool-arg", 'customer_ids=["c-4"]'],
        exchanged,
        tmp_path,
    )
    secrets.add(*(received.bearer for received in upstream.requests))

    messages, log = exchanged.text(), server.log()
    assert "glide" in messages and "POST /mcp" in log  # what is scanned is really there
    assert len(secrets.values) >= 8
    for where, written in (("an MCP message", messages), ("the server's log", log)):
        # Without whitespace too: a log handler may wrap a long line.
        for text_ in (written, "".join(written.split())):
            assert not any(secret in text_ for secret in secrets.values), f"a token in {where}"
            # Tokens the tests never see (an agent session's own session token) are JWTs too.
            assert not JWT.search(text_), f"a JWT in {where}"
            assert "nxag_" not in text_, f"an agent key in {where}"


def sessions_of(stack: Stack, action: str) -> set[str]:
    """The sessions of the MCP server's agent with ``action`` in Nexus's audit trail."""
    found: set[str] = set()
    page_token = ""
    with httpx.Client(base_url=stack.rest_url, timeout=30) as rest:
        while True:
            page = ok(
                rest.get(
                    "/v1/audit-events",
                    params={"page_token": page_token},
                    headers={"X-API-Key": stack.admin_key},
                )
            )
            found |= {
                event["resource"]
                for event in page["audit_events"]
                if event["action"] == action and event["details"].get("agent_id") == AGENT_ID
            }
            page_token = page["next_page_token"]
            if not page_token:
                return found


async def test_nexus_records_every_session_a_tool_call_opened_as_closed(
    server: ExampleServer,
    stack: Stack,
    backend: BackendAuthServer,
    secrets: Secrets,
    exchanged: Exchanged,
) -> None:
    # The agent tool's session token never leaves the MCP server, so Nexus's
    # own record is what shows that its session, too, ended with the call.
    before = sessions_of(stack, "session.granted")
    async with python_client(server.url, sarah(backend, secrets), exchanged) as client:
        for _ in range(2):
            assert not (await client.call_tool("find_contacts", {"query": "Ada"})).is_error
            assert not (await client.call_tool("glide", {"customer_ids": ["c-6"]})).is_error

    granted = sessions_of(stack, "session.granted")
    assert len(granted - before) == 4
    assert granted <= sessions_of(stack, "session.closed")


async def test_a_call_cancelled_while_its_tool_waits_still_closes_its_session(
    server: ExampleServer,
    stack: Stack,
    backend: BackendAuthServer,
    upstream: UpstreamApi,
    secrets: Secrets,
    exchanged: Exchanged,
) -> None:
    before = sessions_of(stack, "session.granted")
    try:
        async with python_client(server.url, sarah(backend, secrets), exchanged) as client:
            call = asyncio.create_task(client.call_tool("find_contacts", {"query": HOLD}))
            assert await asyncio.to_thread(upstream.holding.wait, 30), "the tool never called"
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        opened = sessions_of(stack, "session.granted") - before
        assert len(opened) == 1
        # The server closes the session after it has seen the cancellation; no
        # event of its reaches the test, so Nexus's record is polled.
        deadline = time.monotonic() + 20
        while not opened <= sessions_of(stack, "session.closed"):
            assert time.monotonic() < deadline, "the cancelled call's session stayed open"
            await asyncio.sleep(0.2)
    finally:
        upstream.release()


async def test_the_verifier_learns_a_rotated_key_but_asks_at_most_once_per_interval() -> None:
    with start_backend_auth_server() as issuer:

        def verifier(interval: float) -> JwtTokenVerifier:
            return JwtTokenVerifier(
                issuer=issuer.issuer,
                jwks_url=issuer.jwks_url,
                audience=issuer.audience,
                refetch_interval_seconds=interval,
            )

        eager, patient = verifier(0), verifier(3600)
        before = issuer.issue_token("sarah", permissions=[])
        for each in (eager, patient):
            assert (await each.verify_token(before)) is not None
        issuer.rotate_key()
        after = issuer.issue_token("sarah", permissions=[])
        fetched = issuer.jwks_calls

        accepted = await eager.verify_token(after)
        refused = await patient.verify_token(after)

        assert accepted is not None and accepted.subject == "sarah"
        assert refused is None
        assert issuer.jwks_calls == fetched + 1  # the eager one asked again, the patient one not


class _Published(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body: bytes = owner(self).body
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class JwkSetEndpoint(LoopbackServer):
    """Serves ``body`` as the JWK Set, whatever it is."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        super().__init__(_Published)


@pytest.mark.parametrize("published", [b"[]", b'"keys"', b"not json", b'{"keys": [1]}'])
async def test_a_jwk_set_that_is_not_one_refuses_the_token_and_keeps_serving(
    published: bytes, backend: BackendAuthServer
) -> None:
    token = backend.issue_token("sarah", permissions=[])
    with JwkSetEndpoint(published) as endpoint:
        verifier = JwtTokenVerifier(
            issuer=backend.issuer, jwks_url=endpoint.url, audience=backend.audience
        )
        assert await verifier.verify_token(token) is None


def readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index(f"\n{heading}\n") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```", start)]


async def test_the_readmes_tool_author_snippet_builds_a_server_with_both_tools(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEXUS_AGENT_KEY", "nxag_readme")
    monkeypatch.delenv("NEXUS_API_KEY", raising=False)
    snippet: dict[str, Any] = {"__name__": "readme"}  # not "__main__": build, do not serve
    exec(readme_block("### What a tool author writes"), snippet)  # noqa: S102 (our README)

    tools = {tool.name: tool for tool in await snippet["mcp"].list_tools()}
    assert sorted(tools) == ["find_contacts", "glide"]
    assert list(tools["glide"].input_schema["properties"]) == ["customer_ids"]
    assert list(tools["find_contacts"].input_schema["properties"]) == ["query"]
    await snippet["nexus"].aclose()


def test_importing_without_the_mcp_extra_names_the_extra_to_install() -> None:
    hidden = "import sys; sys.modules['mcp'] = None; import nexus_sdk.mcp"
    done = subprocess.run(
        [sys.executable, "-c", hidden], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert "ImportError: nexus_sdk.mcp needs the MCP Python SDK 2.x" in done.stderr
    assert "pip install 'nexus-sdk[mcp]'" in done.stderr


def test_the_public_api_is_what_the_readme_names() -> None:
    assert sorted(nexus_sdk.mcp.__all__) == [
        "CONNECTION_META_KEY",
        "DEFAULT_SESSION_TTL",
        "JwtTokenVerifier",
        "NexusMCP",
        "ProtectedResource",
        "ToolCredentials",
    ]
    assert nexus_sdk.mcp.CONNECTION_META_KEY == CONNECTION_META_KEY


# What a tool author can get wrong, refused before the server runs


def nexus_for_declarations(**options: str) -> NexusMCP:
    return NexusMCP(
        NexusClientOptions(gateway_url="http://127.0.0.1:9", **options),
        agent_id=AGENT_ID,
        resource=ProtectedResource(
            url="http://127.0.0.1:8000/mcp", authorization_server="https://auth.example.com"
        ),
        token_verifier=JwtTokenVerifier(
            issuer="https://auth.example.com",
            jwks_url="https://auth.example.com/jwks.json",
            audience="http://127.0.0.1:8000/mcp",
        ),
    )


def test_a_tool_must_be_async_take_tool_credentials_and_declare_a_list_of_scopes() -> None:
    nexus = nexus_for_declarations(agent_key="nxag_k")
    declare = nexus.as_agent(provider="salesforce", scopes=["crm:contacts:read"])

    def blocking(query: str, credentials: ToolCredentials) -> str:
        return query

    async def without_credentials(query: str) -> str:
        return query

    with pytest.raises(TypeError, match="async"):
        declare(blocking)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ToolCredentials"):
        declare(without_credentials)
    with pytest.raises(TypeError, match="list of scope"):
        nexus.on_behalf_of_user(provider="internal-ops", scopes="acme:gliding")
    with pytest.raises(TypeError, match="list of scope"):
        nexus.on_behalf_of_user(provider="internal-ops", scopes=[])
    with pytest.raises(ValueError, match="agent key"):
        nexus_for_declarations(api_key="nxa_admin")
    with pytest.raises(ValueError, match="asymmetric"):
        JwtTokenVerifier(issuer="i", jwks_url="https://i/jwks", audience="a", algorithms=["HS256"])


def test_tool_credentials_apply_the_token_but_never_show_it() -> None:
    session = AgentSession(
        session_id="s-1",
        access_token="provider-token-value",
        token_type="Bearer",
        expires_at=2**31,
        scopes=("crm:contacts:read",),
        provider="salesforce",
        connection_id="c-1",
        session_token="session-token-value",
        agent_id=AGENT_ID,
        acting_for="",
        tenant_id="",
        clearance_level="",
        token_scopes=("crm:contacts:read",),
    )
    credentials = session_credentials(session)
    request = httpx.Request("GET", "https://crm.example.com/contacts?q=Ada")
    sent = next(credentials.auth.auth_flow(request))

    assert sent.headers["Authorization"] == "Bearer provider-token-value"
    assert credentials.scopes == ("crm:contacts:read",) and credentials.acting_for == ""
    for shown in (repr(credentials), str(credentials), repr(credentials.auth)):
        assert "token-value" not in shown
    assert "s-1" in repr(credentials)
