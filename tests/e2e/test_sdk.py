"""The Python SDK (``nexus_sdk``) through the real stack: Envoy, the three
services on PostgreSQL, the real OAuth server from npm and a real customer
backend behind BACKEND_AUTH_URL. The guides' Python snippets run as written,
with both the sync and the async client."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.resources
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import jwt
import nexus_sdk
import nexus_sdk.bridge
import pytest
from nexus_sdk import (
    AgentSession,
    AsyncNexusClient,
    Introspection,
    NexusAuthError,
    NexusClient,
    NexusClientOptions,
    NexusConflictError,
    NexusError,
    NexusInvalidRequestError,
    NexusNotFoundError,
    NexusUnavailableError,
    NexusUnexpectedError,
)

from tests.e2e.agent_guide import Guide
from tests.support.backend_auth_server import BackendAuthServer
from tests.support.oidc_server import OidcServer, stats
from tests.support.redirects import Elsewhere, Redirector
from tools.devstack import Stack, free_port


@pytest.fixture
def no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options read keys from the environment; tests choose what it holds."""
    monkeypatch.delenv("NEXUS_AGENT_KEY", raising=False)
    monkeypatch.delenv("NEXUS_API_KEY", raising=False)


def as_agent(stack: Stack, key: str) -> NexusClientOptions:
    return NexusClientOptions(gateway_url=stack.rest_url, agent_key=key)


def userinfo_status(idp: OidcServer, access_token: str) -> int:
    """What the provider says to the token: its userinfo endpoint checks it."""
    headers = {"Authorization": f"Bearer {access_token}"}
    return httpx.get(f"{idp.issuer}/userinfo", headers=headers, timeout=10).status_code


class InternalOps:
    """The guide's internal service: it trusts what the OBO session stamped."""

    def glide(
        self, customer_ids: list[str], tenant_id: str, clearance_level: str
    ) -> dict[str, Any]:
        return {"glided": customer_ids, "tenant_id": tenant_id, "clearance_level": clearance_level}


internal_ops = InternalOps()


def recording(paths: list[str]) -> httpx.Client:
    """An httpx client of the caller's own that notes the raw path of every request."""
    return httpx.Client(event_hooks={"request": [lambda r: paths.append(r.url.raw_path.decode())]})


def test_the_public_api_is_what_the_docs_name() -> None:
    assert sorted(nexus_sdk.__all__) == [
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
    assert all(hasattr(nexus_sdk, name) for name in nexus_sdk.__all__)
    assert sorted(nexus_sdk.bridge.__all__) == [
        "Bridge",
        "BridgeError",
        "BridgeMetrics",
        "BridgeOptions",
        "RetryPolicy",
        "Send",
        "WebSocketHandler",
    ]
    assert importlib.resources.files("nexus_sdk").joinpath("py.typed").is_file()


# Step 4 — Agent requests a scoped session


def test_step_4_in_python_a_read_only_session_reaches_the_provider_and_closes(
    stack: Stack, guide: Guide, idp: OidcServer
) -> None:
    with NexusClient(as_agent(stack, guide.crm_key)) as nexus:
        session = nexus.request_agent_session(
            agent_id="crm-agent",
            provider="salesforce",
            scopes=["crm:contacts:read"],
        )
        try:
            assert userinfo_status(idp, session.access_token) == 200
            active = nexus.introspect_session(session.session_token)
        finally:
            nexus.close_agent_session(session.session_id)

        assert (session.agent_id, session.provider) == ("crm-agent", "salesforce")
        assert session.scopes == ("crm:contacts:read",) and session.token_type == "Bearer"
        assert session.connection_id == guide.connection_id and session.acting_for == ""
        assert not session.expired() and session.expired(now=session.expires_at)
        assert active.active and active.scopes == ("crm:contacts:read",)
        assert (
            active.claims["client_id"] == "crm-agent" and active.claims["jti"] == session.session_id
        )
        assert nexus.introspect_session(session.session_token) == Introspection(False, {})
        nexus.close_agent_session(session.session_id)  # closing twice is harmless


def test_step_4_the_crm_agent_cannot_widen_its_scopes(stack: Stack, guide: Guide) -> None:
    with (
        NexusClient(as_agent(stack, guide.crm_key)) as nexus,
        pytest.raises(NexusAuthError) as denied,
    ):
        nexus.request_agent_session(
            agent_id="crm-agent", provider="salesforce", scopes=["crm:contacts:write"]
        )
    assert (denied.value.status, denied.value.reason) == (403, "AGENT_SCOPE_NOT_ALLOWED")
    assert "crm:contacts:write" in denied.value.metadata["denied_scopes"]


async def test_step_4_with_the_async_client_and_the_go_guides_ttl(
    stack: Stack, guide: Guide, idp: OidcServer
) -> None:
    async with AsyncNexusClient(as_agent(stack, guide.crm_key)) as nexus:
        session = await nexus.request_agent_session(
            agent_id="crm-agent",
            provider="salesforce",
            scopes=["crm:contacts:read"],
            ttl=timedelta(minutes=15),
        )
        try:
            assert userinfo_status(idp, session.access_token) == 200
        finally:
            await nexus.close_agent_session(session.session_id)
        assert session.expires_at <= int(time.time()) + 900
        assert await nexus.introspect_session(session.session_token) == Introspection(False, {})


async def test_one_async_client_serves_concurrent_sessions(stack: Stack, guide: Guide) -> None:
    async with AsyncNexusClient(as_agent(stack, guide.ops_key)) as nexus:
        sessions = await asyncio.gather(
            *(
                nexus.request_agent_session(
                    agent_id="ops-agent", provider="internal-ops", scopes=["acme:flaring"], ttl=60
                )
                for _ in range(5)
            )
        )
        await asyncio.gather(*(nexus.close_agent_session(s.session_id) for s in sessions))
    assert len({s.session_id for s in sessions}) == 5


# Step 5 — OBO session for user-triggered operations


def test_step_5_in_python_run_gliding_for_a_permitted_user(
    stack: Stack, guide: Guide, backend: BackendAuthServer
) -> None:
    with NexusClient(as_agent(stack, guide.ops_key)) as nexus:
        opened: list[AgentSession] = []

        def run_gliding(user_token: str, customer_ids: list[str]) -> dict[str, Any]:
            # Raises NexusAuthError if the user does not have acme:gliding permission
            obo = nexus.request_obo_session(
                agent_id="ops-agent",
                provider="internal-ops",
                scopes=["acme:gliding"],
                user_context_token=user_token,
            )
            opened.append(obo)
            try:
                return internal_ops.glide(
                    customer_ids=customer_ids,
                    tenant_id=obo.tenant_id,  # enforced downstream
                    clearance_level=obo.clearance_level,
                )
            finally:
                nexus.close_agent_session(obo.session_id)

        sarah = backend.issue_token(
            "sarah", permissions=["acme:gliding"], tenant_id="acme-eu", clearance_level="secret"
        )
        assert run_gliding(sarah, ["c-1", "c-2"]) == {
            "glided": ["c-1", "c-2"],
            "tenant_id": "acme-eu",
            "clearance_level": "secret",
        }
        (obo,) = opened
        assert obo.acting_for == "sarah" and obo.access_token == obo.session_token
        assert not nexus.introspect_session(obo.session_token).active

        bob = backend.issue_token("bob", permissions=["acme:flaring"])
        with pytest.raises(NexusAuthError) as refused:
            run_gliding(bob, ["c-1"])
    assert (refused.value.status, refused.value.reason) == (403, "USER_PERMISSION_MISSING")
    assert "acme:gliding" in refused.value.metadata["missing"]
    assert len(opened) == 1


def test_step_5_the_session_token_verifies_with_the_sdks_jwks(
    stack: Stack, guide: Guide, backend: BackendAuthServer
) -> None:
    sarah = backend.issue_token(
        "sarah", permissions=["acme:gliding"], tenant_id="acme-eu", clearance_level="secret"
    )
    with NexusClient(as_agent(stack, guide.ops_key)) as nexus:
        obo = nexus.request_obo_session(
            agent_id="ops-agent",
            provider="internal-ops",
            scopes=["acme:gliding"],
            user_context_token=sarah,
        )
        try:
            active = nexus.introspect_session(obo.session_token)
            keys = jwt.PyJWKSet.from_dict(nexus.jwks())
        finally:
            nexus.close_agent_session(obo.session_id)
    kid = jwt.get_unverified_header(obo.session_token)["kid"]
    claims = jwt.decode(
        obo.session_token,
        next(key for key in keys.keys if key.key_id == kid),
        algorithms=["ES256"],
        audience="internal-ops",
        issuer=stack.rest_url,
    )
    assert claims["act"] == {"sub": "ops-agent"} and claims["sub"] == "sarah"
    assert active.active and active.claims["acting_for"] == "sarah"
    assert (active.claims["tenant_id"], active.claims["exp"]) == ("acme-eu", obo.expires_at)


async def test_step_5_with_the_async_client(
    stack: Stack, guide: Guide, backend: BackendAuthServer
) -> None:
    async with AsyncNexusClient(as_agent(stack, guide.ops_key)) as nexus:

        async def run_gliding(
            user_token: str, customer_ids: list[str], scope: str = "acme:gliding"
        ) -> dict[str, Any]:
            obo = await nexus.request_obo_session(
                agent_id="ops-agent",
                provider="internal-ops",
                scopes=[scope],
                user_context_token=user_token,
            )
            try:
                return internal_ops.glide(
                    customer_ids=customer_ids,
                    tenant_id=obo.tenant_id,
                    clearance_level=obo.clearance_level,
                )
            finally:
                await nexus.close_agent_session(obo.session_id)

        dana = backend.issue_token(
            "dana", permissions=["acme:gliding", "acme:treasury"], tenant_id="acme-us"
        )
        assert (await run_gliding(dana, ["c-9"]))["tenant_id"] == "acme-us"
        with pytest.raises(NexusAuthError) as no_permission:
            await run_gliding(backend.issue_token("erin", permissions=[]), ["c-9"])
        # The user may, but the agent was never allowed acme:treasury.
        with pytest.raises(NexusAuthError) as not_allowed:
            await run_gliding(dana, ["c-9"], scope="acme:treasury")
    assert no_permission.value.reason == "USER_PERMISSION_MISSING"
    assert (not_allowed.value.status, not_allowed.value.reason) == (403, "AGENT_SCOPE_NOT_ALLOWED")
    assert not_allowed.value.metadata["denied_scopes"] == "acme:treasury"


# Integrating agents — fetching credentials by connection id


def test_get_token_by_connection_id_as_in_integrating_agents(
    stack: Stack, guide: Guide, idp: OidcServer, no_env_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_AGENT_KEY", guide.crm_key)  # how the agent is deployed
    headers: dict[str, str] = {}

    client = NexusClient(NexusClientOptions(gateway_url=stack.rest_url))
    try:
        token = client.get_token_by_connection_id(guide.connection_id)
        if token.strategy["type"] == "oauth2":
            headers["Authorization"] = f"Bearer {token.credentials['access_token']}"
    finally:
        client.close()

    assert token.strategy["type"] == "oauth2"
    assert "refresh_token" not in token.credentials
    assert token.expires_at is not None and not token.expired(leeway=60)
    assert httpx.get(f"{idp.issuer}/userinfo", headers=headers, timeout=10).status_code == 200


async def test_an_app_backend_gets_a_token_with_the_async_client_and_its_api_key(
    stack: Stack, guide: Guide, idp: OidcServer, no_env_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_API_KEY", stack.admin_key)
    async with AsyncNexusClient(NexusClientOptions(gateway_url=stack.rest_url)) as client:
        token = await client.get_token_by_connection_id(guide.connection_id)
    assert token.strategy["type"] == "oauth2"
    assert userinfo_status(idp, token.credentials["access_token"]) == 200


async def test_refresh_connection_refreshes_at_the_provider_and_returns_the_token(
    stack: Stack, guide: Guide, idp: OidcServer
) -> None:
    def refreshes() -> int:
        return int(stats(idp)["token_calls"].get("refresh_token", 0))  # type: ignore[attr-defined]

    before = refreshes()
    async with AsyncNexusClient(as_agent(stack, guide.crm_key)) as client:
        fresh = await client.refresh_connection(guide.connection_id)
    assert refreshes() == before + 1
    assert userinfo_status(idp, fresh.credentials["access_token"]) == 200
    with NexusClient(as_agent(stack, guide.crm_key)) as sync_client:
        again = sync_client.refresh_connection(guide.connection_id)
    assert refreshes() == before + 2
    assert again.strategy == {"type": "oauth2"} and again.expires_at is not None


def test_an_injected_http_client_is_used_and_left_open(stack: Stack, guide: Guide) -> None:
    seen: list[str] = []
    with httpx.Client(
        event_hooks={"request": [lambda r: seen.append(r.url.raw_path.decode())]}
    ) as http:
        with NexusClient(as_agent(stack, guide.crm_key), http=http) as nexus:
            assert nexus.jwks()["keys"]
        assert seen == ["/.well-known/jwks.json"]
        assert http.get(f"{stack.rest_url}/.well-known/jwks.json").status_code == 200


# Errors map to one tree, with the gateway's reason


@dataclass(frozen=True)
class Refusal:
    method: str
    kwargs: dict[str, Any]
    error: type[NexusError]
    status: int | None
    reason: str | None
    key: str = "crm"  # "crm", "ops", "admin", "wrong" or "none"
    gateway: str = "stack"  # "stack", "stopped" (nothing listens) or "idp" (not Nexus)


CRM_SESSION = {"agent_id": "crm-agent", "provider": "salesforce", "scopes": ["crm:contacts:read"]}
REFUSALS = {
    "wrong-agent-key": Refusal(
        "request_agent_session", CRM_SESSION, NexusAuthError, 401, "UNAUTHENTICATED", key="wrong"
    ),
    "no-key": Refusal(
        "request_agent_session", CRM_SESSION, NexusAuthError, 401, "UNAUTHENTICATED", key="none"
    ),
    "another-agents-identity": Refusal(
        "request_agent_session", CRM_SESSION, NexusAuthError, 403, "AGENT_MISMATCH", key="ops"
    ),
    "unknown-provider": Refusal(
        "request_agent_session",
        CRM_SESSION | {"provider": "no-such-provider"},
        NexusNotFoundError,
        404,
        "PROVIDER_NOT_FOUND",
    ),
    "ttl-too-long": Refusal(
        "request_agent_session",
        CRM_SESSION | {"ttl": timedelta(days=1)},
        NexusInvalidRequestError,
        400,
        "VALIDATION_FAILED",
    ),
    "ttl-zero": Refusal(
        "request_agent_session",
        CRM_SESSION | {"ttl": 0},
        NexusInvalidRequestError,
        400,
        "VALIDATION_FAILED",
    ),
    "unknown-connection": Refusal(
        "get_token_by_connection_id",
        {"connection_id": "conn_01HXYZ"},
        NexusNotFoundError,
        404,
        "CONNECTION_NOT_FOUND",
        key="admin",
    ),
    # Unquoted, this would be GET /v1/providers; quoted, it is just an unknown id.
    "id-with-dot-dot-slash": Refusal(
        "get_token_by_connection_id",
        {"connection_id": "../providers"},
        NexusNotFoundError,
        404,
        "CONNECTION_NOT_FOUND",
        key="admin",
    ),
    "gateway-stopped": Refusal(
        "request_agent_session", CRM_SESSION, NexusUnavailableError, None, None, gateway="stopped"
    ),
    "not-a-nexus-gateway": Refusal(
        "get_token_by_connection_id",
        {"connection_id": "conn_01HXYZ"},
        NexusNotFoundError,
        404,
        None,
        gateway="idp",
    ),
}


def refusal_options(
    case: Refusal, stack: Stack, guide: Guide, idp: OidcServer
) -> NexusClientOptions:
    url = {
        "stack": stack.rest_url,
        "stopped": f"http://127.0.0.1:{free_port()}",
        "idp": idp.issuer,
    }[case.gateway]
    if case.key == "admin":
        return NexusClientOptions(gateway_url=url, api_key=stack.admin_key)
    key = {"crm": guide.crm_key, "ops": guide.ops_key, "wrong": "nxag_not-a-real-key"}
    return NexusClientOptions(gateway_url=url, agent_key=key.get(case.key))


def check_refusal(case: Refusal, caught: pytest.ExceptionInfo[NexusError]) -> None:
    error = caught.value
    assert type(error) is case.error
    assert (error.status, error.reason) == (case.status, case.reason)
    assert error.message and error.message in str(error)


@pytest.mark.parametrize("name", REFUSALS)
def test_errors_map_to_the_sdks_tree(
    name: str, stack: Stack, guide: Guide, idp: OidcServer, no_env_keys: None
) -> None:
    case = REFUSALS[name]
    with (
        NexusClient(refusal_options(case, stack, guide, idp)) as nexus,
        pytest.raises(NexusError) as caught,
    ):
        getattr(nexus, case.method)(**case.kwargs)
    check_refusal(case, caught)


@pytest.mark.parametrize("name", REFUSALS)
async def test_errors_map_to_the_sdks_tree_async(
    name: str, stack: Stack, guide: Guide, idp: OidcServer, no_env_keys: None
) -> None:
    case = REFUSALS[name]
    async with AsyncNexusClient(refusal_options(case, stack, guide, idp)) as nexus:
        with pytest.raises(NexusError) as caught:
            await getattr(nexus, case.method)(**case.kwargs)
    check_refusal(case, caught)


def test_a_gateway_that_does_not_answer_in_time_is_unavailable(stack: Stack, guide: Guide) -> None:
    # A listening socket that never accepts: the connection hangs until the timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        port = silent.getsockname()[1]
        options = NexusClientOptions(
            gateway_url=f"http://127.0.0.1:{port}", agent_key=guide.crm_key, timeout_seconds=0.3
        )
        with NexusClient(options) as nexus, pytest.raises(NexusUnavailableError) as caught:
            nexus.jwks()
    assert caught.value.status is None and "did not answer in time" in caught.value.message


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, NexusInvalidRequestError),
        (401, NexusAuthError),
        (403, NexusAuthError),
        (404, NexusNotFoundError),
        (409, NexusConflictError),
        (413, NexusInvalidRequestError),
        (429, NexusUnavailableError),
        (500, NexusUnexpectedError),
        (502, NexusUnavailableError),
        (503, NexusUnavailableError),
        (504, NexusUnavailableError),
    ],
)
def test_every_status_has_one_error_class_even_without_a_json_body(
    status: int, error: type[NexusError]
) -> None:
    """Answers the SDK cannot provoke for real (a 409, a proxy's HTML page) read
    like the rest: the same classes, and no body text copied into the error."""
    status_body = {
        "code": 6,
        "message": "agent already exists",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "AGENT_ALREADY_EXISTS",
                "domain": "nexus.dev",
                "metadata": {"agent_id": "crm-agent"},
            }
        ],
    }
    answers = iter(
        [
            httpx.Response(status, html="<html>secret-looking page</html>"),
            httpx.Response(status, json=status_body),
        ]
    )
    transport = httpx.MockTransport(lambda request: next(answers))
    options = NexusClientOptions(gateway_url="https://nexus.example.com", agent_key="k")
    with httpx.Client(transport=transport) as http, NexusClient(options, http=http) as nexus:
        with pytest.raises(NexusError) as page:
            nexus.get_token_by_connection_id("conn_01HXYZ")
        with pytest.raises(NexusError) as rpc_status:
            nexus.get_token_by_connection_id("conn_01HXYZ")
    assert type(page.value) is error and page.value.status == status
    assert page.value.reason is None and f"HTTP {status}" in str(page.value)
    assert "secret-looking" not in str(page.value)
    assert type(rpc_status.value) is error and rpc_status.value.reason == "AGENT_ALREADY_EXISTS"
    assert rpc_status.value.message == "agent already exists"
    assert rpc_status.value.metadata == {"agent_id": "crm-agent"}


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, html="<html>a captive portal</html>"),
        httpx.Response(200, json={"session_id": "s-1"}),
        httpx.Response(200, json=["not", "an", "object"]),
        httpx.Response(302, headers={"Location": "https://elsewhere.example.com/"}),
    ],
)
async def test_an_undocumented_success_or_a_redirect_is_unexpected(answer: httpx.Response) -> None:
    transport = httpx.MockTransport(lambda request: answer)
    options = NexusClientOptions(gateway_url="https://nexus.example.com", agent_key="k")
    async with (
        httpx.AsyncClient(transport=transport) as http,
        AsyncNexusClient(options, http=http) as nexus,
    ):
        with pytest.raises(NexusUnexpectedError) as caught:
            await nexus.request_agent_session(
                agent_id="crm-agent", provider="salesforce", scopes=["crm:contacts:read"]
            )
    assert caught.value.status == answer.status_code
    assert "captive" not in str(caught.value) and "elsewhere" not in str(caught.value)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_origin_gets_no_key_even_through_a_following_client(
    status: int,
) -> None:
    """httpx drops Authorization on another origin but keeps X-API-Key; the
    SDK follows no redirect, whatever the caller's client is set to do."""
    with Elsewhere() as elsewhere, Redirector(elsewhere.url, status) as gateway:
        options = NexusClientOptions(gateway_url=gateway.url, api_key="nxa_admin-key")
        with (
            httpx.Client(follow_redirects=True) as http,
            NexusClient(options, http=http) as nexus,
            pytest.raises(NexusUnexpectedError) as caught,
        ):
            nexus.get_token_by_connection_id("conn_01HXYZ")
        assert caught.value.status == status
        assert elsewhere.seen == []


async def test_a_redirect_to_another_origin_gets_no_key_from_the_async_client() -> None:
    with Elsewhere() as elsewhere, Redirector(elsewhere.url) as gateway:
        for options in (
            NexusClientOptions(gateway_url=gateway.url, api_key="nxa_admin-key"),
            NexusClientOptions(gateway_url=gateway.url, agent_key="nxag_agent-key"),
        ):
            async with (
                httpx.AsyncClient(follow_redirects=True) as http,
                AsyncNexusClient(options, http=http) as nexus,
            ):
                with pytest.raises(NexusUnexpectedError):
                    await nexus.get_token_by_connection_id("conn_01HXYZ")
        assert elsewhere.seen == []


@pytest.mark.parametrize(
    "url",
    [
        "http://nexus.example.com",
        "http://10.0.0.8:8080",
        "http://127.0.0.1.nip.io",
        "http://[::ffff:127.0.0.1]:8080",
        "http://localhost.example.com",
    ],
)
def test_plain_http_is_refused_to_any_host_but_this_machine(url: str, no_env_keys: None) -> None:
    with pytest.raises(ValueError, match="https"):
        NexusClientOptions(gateway_url=url, agent_key="nxag_k")


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://127.8.9.10", "http://[::1]:8080", "http://LOCALHOST"]
)
def test_plain_http_to_this_machine_is_allowed(url: str, no_env_keys: None) -> None:
    assert NexusClientOptions(gateway_url=url, agent_key="nxag_k").gateway_url == url


# Ids cannot change the path, and secrets never show


def test_dot_segments_and_empty_ids_are_refused_before_any_request(
    stack: Stack, guide: Guide
) -> None:
    seen: list[str] = []
    with (
        recording(seen) as http,
        NexusClient(as_agent(stack, guide.crm_key), http=http) as nexus,
    ):
        for bad in ("", ".", ".."):
            with pytest.raises(ValueError, match="session_id"):
                nexus.close_agent_session(bad)
            with pytest.raises(ValueError, match="connection_id"):
                nexus.get_token_by_connection_id(bad)
        with pytest.raises(NexusNotFoundError):
            nexus.get_token_by_connection_id("a/../../providers?x#y")
    assert seen == ["/v1/token/a%2F..%2F..%2Fproviders%3Fx%23y"]


def test_bad_options_are_refused(stack: Stack, no_env_keys: None) -> None:
    with pytest.raises(ValueError, match="not both"):
        NexusClientOptions(gateway_url=stack.rest_url, agent_key="a", api_key="b")
    with pytest.raises(ValueError, match="credentials"):
        NexusClientOptions(gateway_url="https://user:pw@nexus.example.com")
    with pytest.raises(ValueError, match="http"):
        NexusClientOptions(gateway_url="nexus.example.com")
    with pytest.raises(TypeError, match="scopes"), NexusClient(as_agent(stack, "k")) as nexus:
        nexus.request_agent_session(agent_id="crm-agent", provider="salesforce", scopes="a b")


def test_secrets_never_appear_in_repr_or_str(
    stack: Stack, guide: Guide, backend: BackendAuthServer, no_env_keys: None
) -> None:
    options = as_agent(stack, guide.ops_key)
    admin = NexusClientOptions(gateway_url=stack.rest_url, api_key=stack.admin_key)
    for shown in (repr(options), str(options), repr(admin), str(admin)):
        assert guide.ops_key not in shown and stack.admin_key not in shown and "'***'" in shown

    sarah = backend.issue_token("sarah", permissions=["acme:gliding"])
    frank = backend.issue_token("frank", permissions=[])
    with NexusClient(options) as nexus:
        assert guide.ops_key not in repr(nexus)
        obo = nexus.request_obo_session(
            agent_id="ops-agent",
            provider="internal-ops",
            scopes=["acme:gliding"],
            user_context_token=sarah,
        )
        nexus.close_agent_session(obo.session_id)
        with pytest.raises(NexusAuthError) as refused:
            nexus.request_obo_session(
                agent_id="ops-agent",
                provider="internal-ops",
                scopes=["acme:gliding"],
                user_context_token=frank,
            )
    unreachable = dataclasses.replace(options, gateway_url=f"http://127.0.0.1:{free_port()}")
    with NexusClient(unreachable) as nexus, pytest.raises(NexusUnavailableError) as down:
        nexus.get_token_by_connection_id(guide.connection_id)
    with NexusClient(as_agent(stack, guide.crm_key)) as nexus:
        token = nexus.get_token_by_connection_id(guide.connection_id)

    assert obo.session_id in repr(obo)
    for shown in (repr(obo), str(obo)):
        assert obo.session_token not in shown and obo.access_token not in shown
    for shown in (repr(token), str(token)):
        assert token.credentials["access_token"] not in shown
    for error in (refused.value, down.value):
        for shown in (repr(error), str(error), error.message, *map(str, error.metadata.values())):
            assert guide.ops_key not in shown and frank not in shown and sarah not in shown
