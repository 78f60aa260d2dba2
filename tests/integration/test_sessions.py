"""Agent and on-behalf-of sessions over gRPC through the gateway: the real OAuth
server from npm behind a connected provider, a real HTTP server as the
customer's backend, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import jwt
import pytest
from google.protobuf import json_format
from nexus.broker.v1 import audit_pb2, connections_pb2, providers_pb2, sessions_pb2
from nexus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from nexus.policy.v1 import agents_pb2

from tests.conftest import Services
from tests.integration.helpers import ADMIN, expect_error
from tests.integration.test_connections import connections, register
from tests.support.app_server import AppServer
from tests.support.backend_auth_server import BackendAuthServer, start_backend_auth_server
from tests.support.oidc_server import OidcServer, behave, stats

DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
CRM_SCOPES = ["openid", "crm:contacts:read", "crm:contacts:write"]


@pytest.fixture
def backend() -> Iterator[BackendAuthServer]:
    """A backend of this test's own, so a test can stop it."""
    with start_backend_auth_server() as server:
        yield server


def agents(services: Services) -> gateway_pb2_grpc.AgentServiceStub:
    return gateway_pb2_grpc.AgentServiceStub(services.gateway)


def sessions(services: Services) -> gateway_pb2_grpc.SessionServiceStub:
    return gateway_pb2_grpc.SessionServiceStub(services.gateway)


def bearer(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


async def register_agent(services: Services, agent_id: str, scopes: list[str]) -> str:
    created = await agents(services).CreateAgent(
        gateway_pb2.CreateAgentRequest(
            agent=agents_pb2.Agent(agent_id=agent_id, allowed_scopes=scopes)
        ),
        metadata=ADMIN,
    )
    return created.agent_key


async def register_crm(services: Services, idp: OidcServer, **params: Any) -> None:
    provider = providers_pb2.Provider(
        name="salesforce",
        auth_type="oauth2",
        client_id="nexus-client",
        client_secret="s3cret",
        issuer=idp.issuer,
        enable_discovery=True,
        scopes=CRM_SCOPES,
    )
    provider.params.update(params)
    await register(services, provider)


async def connect_crm(
    services: Services,
    app: AppServer,
    workspace: str = "user_sarah",
    scopes: tuple[str, ...] = (),
    tenant_id: str = "",
) -> str:
    """Connect a workspace to salesforce through the provider's real redirect flow."""
    started = await connections(services).RequestConnection(
        gateway_pb2.RequestConnectionRequest(
            connection=connections_pb2.RequestConnectionRequest(
                workspace_id=workspace,
                provider_name="salesforce",
                scopes=scopes or CRM_SCOPES,
                return_url=f"{app.url}/done",
                tenant_id=tenant_id,
            )
        ),
        metadata=ADMIN,
    )
    async with httpx.AsyncClient(follow_redirects=True, timeout=30) as browser:
        landing = await browser.get(started.auth_url)
    assert "status=success" in str(landing.url), landing.url
    if started.confirmation_required:
        # Production's flow: the app confirms with the code the browser brought back.
        code = parse_qs(urlsplit(str(landing.url)).query)["confirmation"][0]
        await connections(services).ConfirmConnection(
            gateway_pb2.ConfirmConnectionRequest(
                connection_id=started.connection_id,
                confirm=connections_pb2.ConfirmConnectionRequest(
                    connection_id=started.connection_id, confirmation=code
                ),
            ),
            metadata=ADMIN,
        )
    return started.connection_id


async def register_internal_ops(services: Services) -> None:
    await register(
        services,
        providers_pb2.Provider(
            name="internal-ops", auth_type="nexus", scopes=["acme:gliding", "acme:flaring"]
        ),
    )


def agent_session(**fields: Any) -> gateway_pb2.CreateAgentSessionRequest:
    return gateway_pb2.CreateAgentSessionRequest(
        session=sessions_pb2.CreateAgentSessionRequest(**fields)
    )


def gliding(user_context_token: str | None = None) -> gateway_pb2.CreateOboSessionRequest:
    """The guide's Step 5: ops-agent asks for acme:gliding on behalf of a user."""
    session = sessions_pb2.CreateOboSessionRequest(
        agent_id="ops-agent", provider="internal-ops", scopes=["acme:gliding"]
    )
    if user_context_token is not None:
        session.user_context_token = user_context_token
    return gateway_pb2.CreateOboSessionRequest(session=session)


async def introspect(
    services: Services, token: str, key: str
) -> sessions_pb2.IntrospectSessionResponse:
    return await sessions(services).IntrospectSession(
        gateway_pb2.IntrospectSessionRequest(
            introspection=sessions_pb2.IntrospectSessionRequest(token=token)
        ),
        metadata=bearer(key),
    )


async def verified_claims(services: Services, token: str, audience: str) -> dict[str, Any]:
    """Verify a session token the way a downstream service would: with PyJWT
    against the published JWK Set (no credential needed to read it)."""
    body = await sessions(services).GetJwks(sessions_pb2.GetJwksRequest())
    key_set = jwt.PyJWKSet.from_dict(json.loads(body.data))
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in key_set.keys if k.key_id == kid)
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=["ES256"],
        audience=audience,
        issuer=services.env["NEXUS_PUBLIC_BASE_URL"],
    )
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    return claims


async def audit_actions(services: Services) -> list[tuple[str, dict[str, Any]]]:
    events = await gateway_pb2_grpc.AuditServiceStub(services.gateway).ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(page_size=100), metadata=ADMIN
    )
    return [
        (e.action, json_format.MessageToDict(e.details))
        for e in events.audit_events
        if e.action.startswith("session.")
    ]


async def userinfo_status(idp: OidcServer, access_token: str) -> int:
    async with httpx.AsyncClient() as client:
        reply = await client.get(
            f"{idp.issuer}/userinfo", headers={"Authorization": f"Bearer {access_token}"}
        )
    return reply.status_code


async def test_crm_agent_gets_a_read_session_the_provider_accepts(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_crm(services, idp, skip_scope_on_exchange=True)
    connection_id = await connect_crm(services, app)
    key = await register_agent(services, "crm-agent", ["crm:contacts:read"])
    before = int(time.time())

    session = await sessions(services).CreateAgentSession(
        agent_session(agent_id="crm-agent", provider="salesforce", scopes=["crm:contacts:read"]),
        metadata=bearer(key),
    )

    assert session.session_id and session.token_type == "Bearer"
    assert session.provider == "salesforce" and session.connection_id == connection_id
    assert list(session.scopes) == ["crm:contacts:read"]
    assert before + 890 <= session.expires_at <= int(time.time()) + 900
    assert await userinfo_status(idp, session.access_token) == 200
    claims = await verified_claims(services, session.session_token, "salesforce")
    assert claims["sub"] == claims["client_id"] == "crm-agent"
    assert claims["scope"] == "crm:contacts:read" and claims["jti"] == session.session_id
    assert claims["exp"] == session.expires_at and "act" not in claims
    granted = [d for a, d in await audit_actions(services) if a == "session.granted"]
    assert granted[0]["agent_id"] == "crm-agent" and granted[0]["outcome"] == "granted"
    # The token is the connection's too: closing the session must not revoke it.
    await sessions(services).CloseAgentSession(
        sessions_pb2.CloseAgentSessionRequest(session_id=session.session_id),
        metadata=bearer(key),
    )
    assert await userinfo_status(idp, session.access_token) == 200


async def test_an_agent_cannot_exceed_its_allowed_scopes(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_crm(services, idp)
    await connect_crm(services, app)
    key = await register_agent(services, "crm-agent", ["crm:contacts:read"])

    message = await expect_error(
        sessions(services).CreateAgentSession(
            agent_session(
                agent_id="crm-agent",
                provider="salesforce",
                scopes=["crm:contacts:read", "crm:contacts:write"],
            ),
            metadata=bearer(key),
        ),
        DENIED,
        "AGENT_SCOPE_NOT_ALLOWED",
    )

    assert "crm:contacts:write" in message and "crm:contacts:read," not in message
    denied = [d for a, d in await audit_actions(services) if a == "session.denied"]
    assert denied[0]["reason"] == "AGENT_SCOPE_NOT_ALLOWED"
    assert denied[0]["scopes"] == ["crm:contacts:read", "crm:contacts:write"]
    assert not [a for a, _ in await audit_actions(services) if a == "session.granted"]


async def test_a_scope_the_connection_was_not_granted_is_refused(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_crm(services, idp)
    await connect_crm(services, app, scopes=("openid", "crm:contacts:read"))
    key = await register_agent(services, "crm-writer", ["crm:contacts:write"])

    message = await expect_error(
        sessions(services).CreateAgentSession(
            agent_session(
                agent_id="crm-writer", provider="salesforce", scopes=["crm:contacts:write"]
            ),
            metadata=bearer(key),
        ),
        DENIED,
        "SCOPE_NOT_GRANTED",
    )
    assert "crm:contacts:write" in message


async def test_an_ambiguous_connection_is_an_error_never_a_guess(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_crm(services, idp)
    sarah = await connect_crm(services, app, "user_sarah")
    bob = await connect_crm(services, app, "user_bob")
    key = await register_agent(services, "crm-agent", ["crm:contacts:read"])
    ask = {"agent_id": "crm-agent", "provider": "salesforce", "scopes": ["crm:contacts:read"]}

    await expect_error(
        sessions(services).CreateAgentSession(agent_session(**ask), metadata=bearer(key)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CONNECTION_AMBIGUOUS",
    )
    by_workspace = await sessions(services).CreateAgentSession(
        agent_session(**ask, workspace_id="user_bob"), metadata=bearer(key)
    )
    by_id = await sessions(services).CreateAgentSession(
        agent_session(**ask, connection_id=sarah), metadata=bearer(key)
    )
    assert (by_workspace.connection_id, by_id.connection_id) == (bob, sarah)
    await expect_error(
        sessions(services).CreateAgentSession(
            agent_session(**ask, workspace_id="user_nobody"), metadata=bearer(key)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_CONNECTION",
    )


async def test_session_expiry_never_outlives_the_provider_token(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_crm(services, idp)
    behave(idp, expires_in=120)
    try:
        await connect_crm(services, app)
    finally:
        behave(idp, expires_in=None)
    key = await register_agent(services, "crm-agent", ["crm:contacts:read"])

    session = await sessions(services).CreateAgentSession(
        agent_session(
            agent_id="crm-agent",
            provider="salesforce",
            scopes=["crm:contacts:read"],
            ttl_seconds=900,
        ),
        metadata=bearer(key),
    )

    assert session.expires_at <= int(time.time()) + 120


async def test_a_provider_that_narrows_scopes_gets_a_narrowed_token_shared_until_near_expiry(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_crm(services, idp, supports_scope_narrowing=True)
    await connect_crm(services, app)
    key = await register_agent(services, "crm-agent", ["crm:contacts:read"])
    refreshes = stats(idp)["token_calls"].get("refresh_token", 0)  # type: ignore[union-attr]
    read_only = agent_session(
        agent_id="crm-agent", provider="salesforce", scopes=["crm:contacts:read"]
    )

    session = await sessions(services).CreateAgentSession(read_only, metadata=bearer(key))
    again = await sessions(services).CreateAgentSession(read_only, metadata=bearer(key))

    provider_claims = jwt.decode(session.access_token, options={"verify_signature": False})
    assert provider_claims["scope"] == "crm:contacts:read"
    assert list(session.token_scopes) == ["crm:contacts:read"]
    # One refresh grant served both sessions: the narrowed token is cached.
    assert stats(idp)["token_calls"]["refresh_token"] == refreshes + 1  # type: ignore[index]
    assert again.access_token == session.access_token
    assert again.session_id != session.session_id
    assert await userinfo_status(idp, session.access_token) == 200
    # The connection keeps its full grant: a plain token read is not narrowed.
    full = await connections(services).GetToken(
        connections_pb2.GetTokenRequest(connection_id=session.connection_id), metadata=ADMIN
    )
    assert full.credentials["access_token"] != session.access_token

    # By default a provider may revoke the whole grant when one token is revoked
    # (RFC 7009 §2.1), so closing never revokes: the session is over at once,
    # and its token lapses at its expiry.
    for each in (session, again):
        await sessions(services).CloseAgentSession(
            sessions_pb2.CloseAgentSessionRequest(session_id=each.session_id),
            metadata=bearer(key),
        )
    assert stats(idp)["revoked"] == []
    assert not (await introspect(services, session.session_token, key)).active
    assert await userinfo_status(idp, full.credentials["access_token"]) == 200


async def test_a_provider_whose_revocation_spares_the_grant_revokes_when_the_last_session_closes(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_crm(services, idp, supports_scope_narrowing=True, revoke_narrowed_tokens=True)
    await connect_crm(services, app)
    key = await register_agent(services, "crm-agent", ["crm:contacts:read"])
    read_only = agent_session(
        agent_id="crm-agent", provider="salesforce", scopes=["crm:contacts:read"]
    )
    first = await sessions(services).CreateAgentSession(read_only, metadata=bearer(key))
    second = await sessions(services).CreateAgentSession(read_only, metadata=bearer(key))
    assert first.access_token == second.access_token

    await sessions(services).CloseAgentSession(
        sessions_pb2.CloseAgentSessionRequest(session_id=first.session_id), metadata=bearer(key)
    )
    # Still shared by the second session: not revoked yet.
    assert stats(idp)["revoked"] == []
    assert await userinfo_status(idp, second.access_token) == 200

    await sessions(services).CloseAgentSession(
        sessions_pb2.CloseAgentSessionRequest(session_id=second.session_id), metadata=bearer(key)
    )
    assert second.access_token in stats(idp)["revoked"]  # type: ignore[operator]
    assert await userinfo_status(idp, second.access_token) == 401
    full = await connections(services).GetToken(
        connections_pb2.GetTokenRequest(connection_id=first.connection_id), metadata=ADMIN
    )
    assert await userinfo_status(idp, full.credentials["access_token"]) == 200


async def test_obo_session_is_stamped_with_the_user_context(
    services: Services, backend: BackendAuthServer
) -> None:
    await register_internal_ops(services)
    key = await register_agent(services, "ops-agent", ["acme:gliding", "acme:flaring"])
    user_token = backend.issue_token(
        "sarah", permissions=["acme:gliding"], tenant_id="acme-eu", clearance_level=3
    )

    obo = await sessions(services).CreateOboSession(
        gliding(user_token),
        metadata=bearer(key),
    )

    assert (obo.acting_for, obo.tenant_id, obo.clearance_level) == ("sarah", "acme-eu", "3")
    assert obo.access_token == obo.session_token and obo.connection_id == ""
    claims = await verified_claims(services, obo.session_token, "internal-ops")
    assert claims["sub"] == "sarah" and claims["act"] == {"sub": "ops-agent"}
    assert claims["acting_for"] == "sarah" and claims["tenant_id"] == "acme-eu"
    assert claims["clearance_level"] == "3" and claims["scope"] == "acme:gliding"
    assert user_token not in json.dumps(await audit_actions(services))
    active = await introspect(services, obo.session_token, key)
    assert active.active and active.sub == "sarah" and active.acting_for == "sarah"
    assert active.client_id == "ops-agent" and active.exp == obo.expires_at


@pytest.mark.parametrize(
    ("user", "reason", "code"),
    [
        ("no-permission", "USER_PERMISSION_MISSING", DENIED),
        ("expired", "USER_TOKEN_INVALID", grpc.StatusCode.UNAUTHENTICATED),
        ("forged", "USER_TOKEN_INVALID", grpc.StatusCode.UNAUTHENTICATED),
    ],
)
async def test_obo_needs_a_valid_user_with_the_permission(
    services: Services, backend: BackendAuthServer, user: str, reason: str, code: grpc.StatusCode
) -> None:
    await register_internal_ops(services)
    key = await register_agent(services, "ops-agent", ["acme:gliding", "acme:flaring"])
    token = {
        "no-permission": lambda: backend.issue_token("bob", permissions=["acme:flaring"]),
        "expired": lambda: backend.issue_token(
            "sarah", permissions=["acme:gliding"], expires_in=-60
        ),
        "forged": lambda: backend.forge_token("sarah", permissions=["acme:gliding"]),
    }[user]()

    await expect_error(
        sessions(services).CreateOboSession(
            gliding(token),
            metadata=bearer(key),
        ),
        code,
        reason,
    )
    actions = await audit_actions(services)
    assert [d["reason"] for a, d in actions if a == "session.denied"] == [reason]
    assert not [a for a, _ in actions if a == "session.granted"]


async def test_the_agent_gate_is_checked_before_the_user_gate(
    services: Services, backend: BackendAuthServer
) -> None:
    await register_internal_ops(services)
    key = await register_agent(services, "ops-agent", ["acme:flaring"])
    calls = backend.calls

    await expect_error(
        sessions(services).CreateOboSession(
            gliding(backend.issue_token("sarah", permissions=["acme:gliding"])),
            metadata=bearer(key),
        ),
        DENIED,
        "AGENT_SCOPE_NOT_ALLOWED",
    )
    assert backend.calls == calls


@pytest.mark.parametrize("fault", ["stopped", "server_error", "slow"])
async def test_obo_fails_closed_when_the_backend_cannot_answer(
    services: Services, backend: BackendAuthServer, fault: str
) -> None:
    await register_internal_ops(services)
    key = await register_agent(services, "ops-agent", ["acme:gliding"])
    token = backend.issue_token("sarah", permissions=["acme:gliding"])
    if fault == "stopped":
        backend.stop()
    else:
        backend.set_mode(fault)

    await expect_error(
        sessions(services).CreateOboSession(
            gliding(token),
            metadata=bearer(key),
        ),
        grpc.StatusCode.UNAVAILABLE,
        "BACKEND_AUTH_UNAVAILABLE",
    )


async def test_an_agent_can_only_act_as_itself(services: Services) -> None:
    await register_internal_ops(services)
    crm_key = await register_agent(services, "crm-agent", ["acme:gliding"])
    await register_agent(services, "ops-agent", ["acme:gliding"])

    await expect_error(
        sessions(services).CreateAgentSession(
            agent_session(agent_id="ops-agent", provider="internal-ops", scopes=["acme:gliding"]),
            metadata=bearer(crm_key),
        ),
        DENIED,
        "AGENT_MISMATCH",
    )
    denied = [d for a, d in await audit_actions(services) if a == "session.denied"]
    assert denied[0]["reason"] == "AGENT_MISMATCH" and denied[0]["agent_id"] == "ops-agent"


async def test_a_disabled_agent_gets_nothing(services: Services) -> None:
    await register_internal_ops(services)
    key = await register_agent(services, "ops-agent", ["acme:gliding"])
    await agents(services).UpdateAgent(
        gateway_pb2.UpdateAgentRequest(agent_id="ops-agent", agent=agents_pb2.Agent(enabled=False)),
        metadata=ADMIN,
    )
    ask = agent_session(agent_id="ops-agent", provider="internal-ops", scopes=["acme:gliding"])

    await expect_error(
        sessions(services).CreateAgentSession(ask, metadata=bearer(key)), DENIED, "AGENT_DISABLED"
    )
    # Not even an admin can issue for it.
    await expect_error(
        sessions(services).CreateAgentSession(ask, metadata=ADMIN), DENIED, "AGENT_DISABLED"
    )


async def test_closing_makes_the_session_inactive_and_twice_is_harmless(
    services: Services,
) -> None:
    await register_internal_ops(services)
    key = await register_agent(services, "ops-agent", ["acme:gliding"])
    other = await register_agent(services, "crm-agent", ["acme:gliding"])
    session = await sessions(services).CreateAgentSession(
        agent_session(agent_id="ops-agent", provider="internal-ops", scopes=["acme:gliding"]),
        metadata=bearer(key),
    )
    close = sessions_pb2.CloseAgentSessionRequest(session_id=session.session_id)
    assert (await introspect(services, session.session_token, key)).active

    await expect_error(
        sessions(services).CloseAgentSession(close, metadata=bearer(other)),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
    )
    await sessions(services).CloseAgentSession(close, metadata=bearer(key))
    await sessions(services).CloseAgentSession(close, metadata=bearer(key))

    closed = await introspect(services, session.session_token, key)
    assert closed == sessions_pb2.IntrospectSessionResponse(active=False)
    junk = "x" * 5000
    message = await expect_error(
        sessions(services).CloseAgentSession(
            sessions_pb2.CloseAgentSessionRequest(session_id=junk), metadata=bearer(key)
        ),
        INVALID,
        "VALIDATION_FAILED",
    )
    assert junk not in message
    actions = [a for a, _ in await audit_actions(services)]
    assert actions.count("session.closed") == 1


async def test_introspection_says_inactive_for_anything_not_ours(services: Services) -> None:
    key = await register_agent(services, "ops-agent", ["acme:gliding"])
    foreign = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "k" * 32, algorithm="HS256")
    for token in ("not-a-jwt", foreign):
        assert not (await introspect(services, token, key)).active
    await expect_error(introspect(services, "", key), INVALID, "VALIDATION_FAILED")


@pytest.mark.parametrize(
    ("fields", "code", "reason"),
    [
        ({"agent_id": "ghost-agent"}, grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND"),
        ({"provider": "no-such-provider"}, grpc.StatusCode.NOT_FOUND, "PROVIDER_NOT_FOUND"),
        ({"scopes": []}, INVALID, "VALIDATION_FAILED"),
        ({"scopes": [""]}, INVALID, "VALIDATION_FAILED"),
        ({"scopes": ["acme:unknown"]}, DENIED, "AGENT_SCOPE_NOT_ALLOWED"),
        ({"ttl_seconds": 0}, INVALID, "VALIDATION_FAILED"),
        ({"ttl_seconds": 86400}, INVALID, "VALIDATION_FAILED"),
        ({"agent_id": ""}, INVALID, "VALIDATION_FAILED"),
        ({"connection_id": "not-a-uuid"}, INVALID, "VALIDATION_FAILED"),
        # PostgreSQL cannot store NUL; refused alike on every database.
        ({"workspace_id": "user\x00sarah"}, INVALID, "VALIDATION_FAILED"),
    ],
)
async def test_bad_session_requests_are_refused_and_issue_nothing(
    services: Services, fields: dict[str, Any], code: grpc.StatusCode, reason: str
) -> None:
    await register_internal_ops(services)
    await register_agent(services, "ops-agent", ["acme:gliding"])
    ask = {"agent_id": "ops-agent", "provider": "internal-ops", "scopes": ["acme:gliding"]}

    await expect_error(
        sessions(services).CreateAgentSession(agent_session(**(ask | fields)), metadata=ADMIN),
        code,
        reason,
    )
    assert not [a for a, _ in await audit_actions(services) if a == "session.granted"]


async def test_obo_without_a_user_token_is_refused(services: Services) -> None:
    await register_internal_ops(services)
    await register_agent(services, "ops-agent", ["acme:gliding"])

    await expect_error(
        sessions(services).CreateOboSession(
            gliding(),
            metadata=ADMIN,
        ),
        INVALID,
        "VALIDATION_FAILED",
    )


async def test_static_credential_providers_cannot_back_a_session(
    services: Services, app: AppServer
) -> None:
    await register(
        services,
        providers_pb2.Provider(
            name="weather", auth_type="basic_auth", api_base_url=app.url, scopes=["read"]
        ),
    )
    await register_agent(services, "weather-agent", ["read"])

    await expect_error(
        sessions(services).CreateAgentSession(
            agent_session(agent_id="weather-agent", provider="weather", scopes=["read"]),
            metadata=ADMIN,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_NOT_SUPPORTED",
    )


async def test_agent_keys_read_tokens_but_not_admin_methods(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_crm(services, idp)
    connection_id = await connect_crm(services, app)
    # Allowed every scope the connection was granted, so GetToken may release it.
    key = await register_agent(services, "crm-agent", CRM_SCOPES)

    payload = await connections(services).GetToken(
        connections_pb2.GetTokenRequest(connection_id=connection_id), metadata=bearer(key)
    )
    assert payload.credentials["access_token"]
    await expect_error(
        connections(services).ListConnections(
            connections_pb2.ListConnectionsRequest(workspace_id="user_sarah"),
            metadata=bearer(key),
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )
