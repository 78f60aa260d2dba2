"""Sessions against the certified OpenID provider (npm ``oidc-provider``), which
revokes a whole grant when any one of its tokens is revoked (RFC 7009 §2.1):
closing sessions must never log the user out of the connection."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from nexus.broker.v1 import connections_pb2, providers_pb2, sessions_pb2
from nexus.gateway.v1 import gateway_pb2

from tests.conftest import Services
from tests.integration.helpers import ADMIN, expect_error
from tests.integration.test_access_holes import register_agent
from tests.integration.test_connections import connections, register
from tests.integration.test_sessions import agent_session, bearer, connect_crm, sessions
from tests.support.app_server import AppServer
from tests.support.certified_oidc import (
    CertifiedOidc,
    certified_stats,
    introspect,
    start_certified_oidc,
)

READ = "crm:contacts:read"
SCOPES = ["openid", READ, "crm:contacts:write"]


@pytest.fixture
def certified(services: Services) -> Iterator[CertifiedOidc]:
    with start_certified_oidc([f"{services.browser_url}/v1/callback/salesforce"]) as server:
        yield server


async def _connect(
    services: Services, app: AppServer, certified: CertifiedOidc, **params: object
) -> str:
    provider = providers_pb2.Provider(
        name="salesforce",
        auth_type="oauth2",
        client_id=certified.client_id,
        client_secret=certified.client_secret,
        issuer=certified.issuer,
        enable_discovery=True,
        scopes=SCOPES,
    )
    provider.params.update({"supports_scope_narrowing": True, **params})
    await register(services, provider)
    return await connect_crm(services, app, "alice", tuple(SCOPES))


async def _refresh(services: Services, connection_id: str) -> connections_pb2.Connection:
    return await connections(services).RefreshConnection(
        connections_pb2.RefreshConnectionRequest(connection_id=connection_id), metadata=ADMIN
    )


async def _close(services: Services, session: sessions_pb2.AgentSession, key: str) -> None:
    await sessions(services).CloseAgentSession(
        sessions_pb2.CloseAgentSessionRequest(session_id=session.session_id),
        metadata=bearer(key),
    )


async def test_closing_ten_narrowed_sessions_leaves_the_connections_grant_alone(
    services: Services, app: AppServer, certified: CertifiedOidc
) -> None:
    connection_id = await _connect(services, app, certified)
    keys = {
        agent_id: await register_agent(
            services, agent_id, [READ], providers=["salesforce"], workspaces=["alice"]
        )
        for agent_id in ("reader-1", "reader-2")
    }
    opened = [
        (
            key,
            await sessions(services).CreateAgentSession(
                agent_session(agent_id=agent_id, provider="salesforce", scopes=[READ]),
                metadata=bearer(key),
            ),
        )
        for agent_id, key in keys.items()
        for _ in range(5)
    ]
    narrowed = {session.access_token for _, session in opened}
    # One narrowed token per agent, shared by its sessions, each carrying only READ.
    assert len(narrowed) == 2
    assert all(introspect(certified, token)["scope"] == READ for token in narrowed)

    for key, session in opened:
        await _close(services, session, key)

    assert certified_stats(certified)["revocation_calls"] == 0
    checked = await connections(services).CheckConnection(
        connections_pb2.CheckConnectionRequest(connection_id=connection_id), metadata=ADMIN
    )
    assert checked.status == "active"
    refreshed = await _refresh(services, connection_id)
    assert refreshed.status == "active" and refreshed.last_error == ""
    token = await connections(services).GetToken(
        connections_pb2.GetTokenRequest(connection_id=connection_id), metadata=ADMIN
    )
    assert introspect(certified, token.credentials["access_token"])["active"] is True
    for key, session in opened:
        answer = await sessions(services).IntrospectSession(
            gateway_pb2.IntrospectSessionRequest(
                introspection=sessions_pb2.IntrospectSessionRequest(token=session.session_token)
            ),
            metadata=bearer(key),
        )
        assert not answer.active


async def test_marking_such_a_provider_revocable_would_log_the_user_out(
    services: Services, app: AppServer, certified: CertifiedOidc
) -> None:
    """Why revoke_narrowed_tokens is off unless the provider says revocation stays
    with the token: this server would take the whole grant with it."""
    connection_id = await _connect(services, app, certified, revoke_narrowed_tokens=True)
    key = await register_agent(
        services, "reader", [READ], providers=["salesforce"], workspaces=["alice"]
    )
    session = await sessions(services).CreateAgentSession(
        agent_session(agent_id="reader", provider="salesforce", scopes=[READ]),
        metadata=bearer(key),
    )
    await _close(services, session, key)

    assert certified_stats(certified)["revocation_calls"] == 1
    await expect_error(
        _refresh(services, connection_id),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CONNECTION_REAUTH_REQUIRED",
    )
