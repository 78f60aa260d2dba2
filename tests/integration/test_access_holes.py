"""Each way an agent could once reach more than it was granted, tried again
over gRPC through the gateway with production's defaults, on SQLite and
PostgreSQL: the real OAuth server from npm, a real customer backend."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from nexus.broker.v1 import (
    audit_pb2,
    connections_pb2,
    connections_pb2_grpc,
    providers_pb2,
    sessions_pb2,
    sessions_pb2_grpc,
)
from nexus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from nexus.policy.v1 import agents_pb2

from tests.conftest import INTERNAL_TOKEN, Services
from tests.integration.helpers import ADMIN, expect_error
from tests.integration.test_connections import connections
from tests.integration.test_sessions import (
    CRM_SCOPES,
    agent_session,
    agents,
    bearer,
    connect_crm,
    introspect,
    register_crm,
    sessions,
)
from tests.support.app_server import AppServer
from tests.support.backend_auth_server import BackendAuthServer
from tests.support.oidc_server import OidcServer, stats

DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
READ = "crm:contacts:read"


@pytest.fixture
def service_overrides() -> dict[str, str]:
    return {"NEXUS_ENVIRONMENT": "production"}


async def register_agent(
    services: Services,
    agent_id: str,
    scopes: list[str],
    **bindings: Any,
) -> str:
    agent = agents_pb2.Agent(agent_id=agent_id, allowed_scopes=scopes)
    if bindings:
        agent.bindings.CopyFrom(agents_pb2.AgentBindings(**bindings))
    created = await agents(services).CreateAgent(
        gateway_pb2.CreateAgentRequest(agent=agent), metadata=ADMIN
    )
    return created.agent_key


async def get_token(services: Services, connection_id: str, key: str) -> Any:
    return await connections(services).GetToken(
        connections_pb2.GetTokenRequest(connection_id=connection_id), metadata=bearer(key)
    )


def obo_session(user_token: str, **fields: Any) -> gateway_pb2.CreateOboSessionRequest:
    return gateway_pb2.CreateOboSessionRequest(
        session=sessions_pb2.CreateOboSessionRequest(
            provider="salesforce", scopes=[READ], user_context_token=user_token, **fields
        )
    )


async def test_an_agent_reads_no_connection_outside_its_bindings(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_crm(services, idp)
    alice = await connect_crm(services, app, "alice")
    bob = await connect_crm(services, app, "bob")
    calendar = await register_agent(
        services, "calendar-agent", ["calendar:read"], providers=["calendar"], workspaces=["*"]
    )
    alice_only = await register_agent(
        services, "alice-agent", CRM_SCOPES, providers=["salesforce"], workspaces=["alice"]
    )

    # Not theirs reads as absent: the agent learns neither bob's workspace nor
    # that the id names anything. The audit keeps the real reason.
    for connection_id in (alice, bob):
        await expect_error(
            get_token(services, connection_id, calendar), NOT_FOUND, "CONNECTION_NOT_FOUND"
        )
    message = await expect_error(
        get_token(services, bob, alice_only), NOT_FOUND, "CONNECTION_NOT_FOUND"
    )
    nobody = "00000000-0000-4000-8000-000000000000"
    absent = await expect_error(
        get_token(services, nobody, alice_only), NOT_FOUND, "CONNECTION_NOT_FOUND"
    )
    assert message == absent.replace(nobody, bob) and "'bob'" not in message
    trail = await gateway_pb2_grpc.AuditServiceStub(services.gateway).ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(resource=f"connections/{bob}"), metadata=ADMIN
    )
    assert [e.details["reason"] for e in trail.audit_events if e.action == "access.denied"] == [
        "WORKSPACE_NOT_BOUND",
        "PROVIDER_NOT_BOUND",
    ]
    assert (await get_token(services, alice, alice_only)).credentials["access_token"]


async def test_get_token_releases_no_grant_wider_than_the_agent_may_hold(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_crm(services, idp)
    connection_id = await connect_crm(services, app, "alice")
    reader = await register_agent(
        services, "reader", [READ], providers=["salesforce"], workspaces=["alice"]
    )
    message = await expect_error(
        get_token(services, connection_id, reader), DENIED, "CONNECTION_EXCEEDS_AGENT_SCOPES"
    )
    assert "crm:contacts:write" in message and "/v1/agent-sessions" in message
    assert "full_connection_access" in message

    full = await register_agent(
        services,
        "full-reader",
        [READ],
        providers=["salesforce"],
        workspaces=["alice"],
        full_connection_access=True,
    )
    assert (await get_token(services, connection_id, full)).credentials["access_token"]


async def test_an_unbound_agent_is_refused_with_the_patch_that_binds_it(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_crm(services, idp)
    connection_id = await connect_crm(services, app, "user_sarah")
    key = await register_agent(services, "crm-agent", CRM_SCOPES)

    message = await expect_error(get_token(services, connection_id, key), DENIED, "AGENT_NOT_BOUND")
    assert (
        'PATCH /admin/v1/agents/crm-agent {"bindings": {"providers": ["salesforce"], '
        '"workspaces": ["user_sarah"]}}' in message
    )
    # Applying the fix as the message gives it lets the same call through.
    await agents(services).UpdateAgent(
        gateway_pb2.UpdateAgentRequest(
            agent_id="crm-agent",
            agent=agents_pb2.Agent(
                bindings=agents_pb2.AgentBindings(
                    providers=["salesforce"], workspaces=["user_sarah"]
                )
            ),
        ),
        metadata=ADMIN,
    )
    assert (await get_token(services, connection_id, key)).credentials["access_token"]


async def test_agent_sessions_stay_in_the_agents_workspaces(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_crm(services, idp, supports_scope_narrowing=True)
    bob = await connect_crm(services, app, "bob")
    key = await register_agent(
        services, "crm-agent", [READ], providers=["salesforce"], workspaces=["alice"]
    )
    asked: dict[str, Any] = {"agent_id": "crm-agent", "provider": "salesforce", "scopes": [READ]}
    # Without a connection named, the search looks only where the agent is bound.
    await expect_error(
        sessions(services).CreateAgentSession(agent_session(**asked), metadata=bearer(key)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_CONNECTION",
    )
    # Asked by workspace, the agent named it itself; by connection id, another
    # workspace's connection reads as absent.
    for named, code, reason in (
        ({"workspace_id": "bob"}, DENIED, "WORKSPACE_NOT_BOUND"),
        ({"connection_id": bob}, NOT_FOUND, "CONNECTION_NOT_FOUND"),
    ):
        await expect_error(
            sessions(services).CreateAgentSession(
                agent_session(**asked, **named), metadata=bearer(key)
            ),
            code,
            reason,
        )
    alice = await connect_crm(services, app, "alice")
    session = await sessions(services).CreateAgentSession(
        agent_session(**asked), metadata=bearer(key)
    )
    assert session.connection_id == alice


async def test_an_obo_session_acting_for_alice_never_gets_bobs_token(
    services: Services, idp: OidcServer, app: AppServer, backend: BackendAuthServer
) -> None:
    await register_crm(services, idp, supports_scope_narrowing=True)
    bob = await connect_crm(services, app, "bob")
    key = await register_agent(
        services, "ops-agent", [READ], providers=["salesforce"], on_behalf_of_only=True
    )
    alice_token = backend.issue_token("alice", permissions=[READ])
    stub = sessions(services)

    await expect_error(
        stub.CreateOboSession(obo_session(alice_token, agent_id="ops-agent"), metadata=bearer(key)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_CONNECTION",
    )
    await expect_error(
        stub.CreateOboSession(
            obo_session(alice_token, agent_id="ops-agent", connection_id=bob),
            metadata=bearer(key),
        ),
        NOT_FOUND,
        "CONNECTION_NOT_FOUND",
    )
    message = await expect_error(
        stub.CreateOboSession(
            obo_session(alice_token, agent_id="ops-agent", workspace_id="bob"),
            metadata=bearer(key),
        ),
        DENIED,
        "USER_WORKSPACE_NOT_OWNED",
    )
    assert "'alice'" in message and "'bob'" in message

    # The backend may list further workspaces the user owns.
    team = await connect_crm(services, app, "team-alice")
    teamed = backend.issue_token("alice", permissions=[READ], workspaces=["team-alice"])
    obo = await stub.CreateOboSession(
        obo_session(teamed, agent_id="ops-agent"), metadata=bearer(key)
    )
    assert obo.connection_id == team and obo.acting_for == "alice"
    # An OBO-only agent gets nothing without a user.
    await expect_error(get_token(services, bob, key), DENIED, "AGENT_OBO_ONLY")


async def test_a_session_never_carries_more_than_it_says_without_saying_so(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_crm(services, idp)  # cannot narrow
    await connect_crm(services, app, "alice")
    key = await register_agent(
        services, "crm-agent", [READ], providers=["salesforce"], workspaces=["alice"]
    )
    read_only = agent_session(agent_id="crm-agent", provider="salesforce", scopes=[READ])

    message = await expect_error(
        sessions(services).CreateAgentSession(read_only, metadata=bearer(key)),
        DENIED,
        "TOKEN_BROADER_THAN_SESSION",
    )
    assert "allow_broader_session_tokens" in message and "supports_scope_narrowing" in message

    providers = gateway_pb2_grpc.ProviderServiceStub(services.gateway)
    marked = providers_pb2.Provider()
    marked.params.update({"allow_broader_session_tokens": True})
    await providers.UpdateProvider(
        gateway_pb2.UpdateProviderRequest(
            id="salesforce",
            provider=marked,
            update_mask=field_mask_pb2.FieldMask(paths=["params"]),
        ),
        metadata=ADMIN,
    )
    session = await sessions(services).CreateAgentSession(read_only, metadata=bearer(key))
    assert list(session.scopes) == [READ]
    assert sorted(session.token_scopes) == sorted(CRM_SCOPES)


async def _session(services: Services, key: str) -> sessions_pb2.AgentSession:
    return await sessions(services).CreateAgentSession(
        agent_session(agent_id="crm-agent", provider="salesforce", scopes=[READ]),
        metadata=bearer(key),
    )


async def _admin_sees(services: Services, token: str) -> bool:
    answer = await sessions(services).IntrospectSession(
        gateway_pb2.IntrospectSessionRequest(
            introspection=sessions_pb2.IntrospectSessionRequest(token=token)
        ),
        metadata=ADMIN,
    )
    return answer.active


@pytest.mark.parametrize("kill", ["disable", "delete", "rotate"])
async def test_ending_an_agent_ends_its_sessions_at_once(
    services: Services, idp: OidcServer, app: AppServer, kill: str
) -> None:
    await register_crm(services, idp, supports_scope_narrowing=True, revoke_narrowed_tokens=True)
    await connect_crm(services, app, "alice")
    key = await register_agent(
        services, "crm-agent", [READ], providers=["salesforce"], workspaces=["alice"]
    )
    session = await _session(services, key)
    assert await _admin_sees(services, session.session_token)

    stub = agents(services)
    if kill == "disable":
        await stub.UpdateAgent(
            gateway_pb2.UpdateAgentRequest(
                agent_id="crm-agent", agent=agents_pb2.Agent(enabled=False)
            ),
            metadata=ADMIN,
        )
    elif kill == "delete":
        await stub.DeleteAgent(agents_pb2.DeleteAgentRequest(agent_id="crm-agent"), metadata=ADMIN)
    else:
        await stub.RotateAgentKey(
            gateway_pb2.RotateAgentKeyRequest(agent_id="crm-agent"), metadata=ADMIN
        )

    assert not await _admin_sees(services, session.session_token)
    # The provider supports it, so the narrowed token is revoked there too.
    assert session.access_token in stats(idp)["revoked"]  # type: ignore[operator]


async def test_a_key_rotation_with_grace_keeps_the_sessions(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_crm(services, idp, supports_scope_narrowing=True)
    await connect_crm(services, app, "alice")
    key = await register_agent(
        services, "crm-agent", [READ], providers=["salesforce"], workspaces=["alice"]
    )
    session = await _session(services, key)
    await agents(services).RotateAgentKey(
        gateway_pb2.RotateAgentKeyRequest(
            agent_id="crm-agent",
            rotation=agents_pb2.RotateAgentKeyRequest(grace_period_seconds=60),
        ),
        metadata=ADMIN,
    )
    assert await _admin_sees(services, session.session_token)


async def test_only_admins_and_the_sessions_own_agent_may_introspect_it(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_crm(services, idp, supports_scope_narrowing=True)
    await connect_crm(services, app, "alice")
    key = await register_agent(
        services, "crm-agent", [READ], providers=["salesforce"], workspaces=["alice"]
    )
    other = await register_agent(services, "other-agent", [READ], providers=["*"], workspaces=["*"])
    session = await _session(services, key)

    assert (await introspect(services, session.session_token, key)).active
    assert await _admin_sees(services, session.session_token)
    stranger = await introspect(services, session.session_token, other)
    assert stranger == sessions_pb2.IntrospectSessionResponse(active=False)


async def test_an_obo_session_never_outlives_its_users_token(
    services: Services, idp: OidcServer, app: AppServer, backend: BackendAuthServer
) -> None:
    await register_crm(services, idp, supports_scope_narrowing=True)
    await connect_crm(services, app, "alice")
    key = await register_agent(
        services, "ops-agent", [READ], providers=["salesforce"], on_behalf_of_only=True
    )
    short = backend.issue_token("alice", permissions=[READ], expires_in=30, workspaces=["alice"])
    obo = await sessions(services).CreateOboSession(
        obo_session(short, agent_id="ops-agent", ttl_seconds=1800), metadata=bearer(key)
    )
    assert obo.expires_at <= int(time.time()) + 30


WINDOW = 4.0


@pytest.mark.parametrize(
    "service_overrides",
    [{"NEXUS_ENVIRONMENT": "production", "NEXUS_FORCED_REFRESH_INTERVAL_SECONDS": str(WINDOW)}],
)
async def test_forced_refreshes_make_at_most_one_provider_call_per_window(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_crm(services, idp)
    connection_id = await connect_crm(services, app, "alice")
    key = await register_agent(
        services, "crm-agent", CRM_SCOPES, providers=["salesforce"], workspaces=["alice"]
    )
    before = stats(idp)["token_calls"].get("refresh_token", 0)  # type: ignore[union-attr]
    # Connecting counts as a refresh: the window starts then.
    connected = await connections(services).CheckConnection(
        connections_pb2.CheckConnectionRequest(connection_id=connection_id), metadata=ADMIN
    )
    opens = connected.last_refreshed_at.ToDatetime(UTC) + timedelta(seconds=WINDOW)
    await asyncio.sleep(max(0.0, (opens - datetime.now(UTC)).total_seconds()) + 0.1)

    def refresh() -> Any:
        return connections(services).RefreshConnection(
            connections_pb2.RefreshConnectionRequest(connection_id=connection_id),
            metadata=bearer(key),
        )

    # Ten at once, then ten one after another: one call reaches the provider.
    answers = list(await asyncio.gather(*(refresh() for _ in range(10)), return_exceptions=True))
    for _ in range(10):
        answers += await asyncio.gather(refresh(), return_exceptions=True)
    limited = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert stats(idp)["token_calls"]["refresh_token"] == before + 1  # type: ignore[index]
    assert len(limited) >= 10 and len(answers) - len(limited) >= 1
    assert all(a.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for a in limited)
    message = await expect_error(
        refresh(), grpc.StatusCode.RESOURCE_EXHAUSTED, "REFRESH_RATE_LIMITED"
    )
    assert "refreshed moments ago" in message


async def test_a_binding_change_applies_to_the_very_next_decision(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    """The policy service caches agents for the hot path; a change drops the entry."""
    await register_crm(services, idp)
    bob = await connect_crm(services, app, "bob")
    key = await register_agent(
        services, "crm-agent", CRM_SCOPES, providers=["salesforce"], workspaces=["alice"]
    )
    await expect_error(get_token(services, bob, key), NOT_FOUND, "CONNECTION_NOT_FOUND")

    async def bind(*workspaces: str) -> None:
        await agents(services).UpdateAgent(
            gateway_pb2.UpdateAgentRequest(
                agent_id="crm-agent",
                agent=agents_pb2.Agent(
                    bindings=agents_pb2.AgentBindings(
                        providers=["salesforce"], workspaces=list(workspaces)
                    )
                ),
            ),
            metadata=ADMIN,
        )

    await bind("alice", "bob")
    assert (await get_token(services, bob, key)).credentials["access_token"]
    await bind("alice")
    await expect_error(get_token(services, bob, key), NOT_FOUND, "CONNECTION_NOT_FOUND")


async def test_a_service_call_without_a_caller_gets_no_credential_and_no_kill_switch_by_mistake(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    """Straight to the broker with the internal token but no caller the gateway
    established: no caller, no credential."""
    await register_crm(services, idp)
    connection_id = await connect_crm(services, app, "alice")
    internal = (("x-nexus-internal-token", INTERNAL_TOKEN),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{services.broker_port}") as channel:
        broker_tokens = connections_pb2_grpc.ConnectionServiceStub(channel)
        for call in (broker_tokens.GetToken, broker_tokens.RefreshConnection):
            request_type = (
                connections_pb2.GetTokenRequest
                if call is broker_tokens.GetToken
                else connections_pb2.RefreshConnectionRequest
            )
            await expect_error(
                call(request_type(connection_id=connection_id), metadata=internal),
                DENIED,
                "CALLER_NOT_ALLOWED",
            )
        await expect_error(
            sessions_pb2_grpc.SessionServiceStub(channel).EndAgentSessions(
                sessions_pb2.EndAgentSessionsRequest(agent_id=""), metadata=internal
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "VALIDATION_FAILED",
        )


async def test_a_user_of_another_tenant_never_reaches_a_connection_of_the_same_name(
    services: Services, idp: OidcServer, app: AppServer, backend: BackendAuthServer
) -> None:
    """Ids are not unique across tenants: organisation 1001 of tenant A is not
    user 1001 of tenant B, whatever the ids say, and production grants no
    workspace for an id alone."""
    await register_crm(services, idp, supports_scope_narrowing=True)
    org = await connect_crm(services, app, "1001", tenant_id="tenant-a")
    untenanted = await connect_crm(services, app, "2002")
    key = await register_agent(
        services, "ops-agent", [READ], providers=["salesforce"], on_behalf_of_only=True
    )
    stub = sessions(services)

    def ask(token: str, **named: str) -> Any:
        return stub.CreateOboSession(
            obo_session(token, agent_id="ops-agent", **named), metadata=bearer(key)
        )

    # Tenant B's user 1001, even with 1001 listed by the backend as theirs.
    other_tenant = backend.issue_token(
        "1001", permissions=[READ], tenant_id="tenant-b", workspaces=["1001"]
    )
    await expect_error(ask(other_tenant, connection_id=org), NOT_FOUND, "CONNECTION_NOT_FOUND")
    await expect_error(ask(other_tenant), grpc.StatusCode.FAILED_PRECONDITION, "NO_CONNECTION")
    # A user whose id merely equals the workspace's owns nothing in production.
    by_id_alone = backend.issue_token("2002", permissions=[READ], tenant_id="tenant-b")
    await expect_error(
        ask(by_id_alone, connection_id=untenanted), NOT_FOUND, "CONNECTION_NOT_FOUND"
    )
    await expect_error(ask(by_id_alone), grpc.StatusCode.FAILED_PRECONDITION, "NO_CONNECTION")

    # Tenant A's user to whom the backend gives workspace 1001 reaches it, named or not.
    own = backend.issue_token("u-7", permissions=[READ], tenant_id="tenant-a", workspaces=["1001"])
    assert (await ask(own, connection_id=org)).connection_id == org
    found = await ask(own)
    assert found.connection_id == org and found.tenant_id == "tenant-a"
    checked = await connections(services).CheckConnection(
        connections_pb2.CheckConnectionRequest(connection_id=org), metadata=ADMIN
    )
    assert checked.tenant_id == "tenant-a"
