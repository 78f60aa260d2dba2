"""Hostile input over gRPC, on SQLite and PostgreSQL: every one gets a 4xx
status with an ErrorInfo reason, never INTERNAL or UNKNOWN. The provider is
the real OAuth server from npm, the customer's backend a real HTTP server."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nexus.broker.v1 import audit_pb2, connections_pb2, providers_pb2
from nexus.gateway.v1 import gateway_pb2_grpc
from nexus.policy.v1 import agents_pb2
from nexus_common._auth import INTERNAL_TOKEN_HEADER

from tests.conftest import INTERNAL_TOKEN, Services
from tests.integration.helpers import ADMIN, expect_error
from tests.integration.test_connections import (
    connections,
    register,
    register_idp,
    start,
    token,
)
from tests.integration.test_sessions import (
    agent_session,
    agents,
    bearer,
    gliding,
    register_agent,
    register_internal_ops,
    sessions,
)
from tests.support.app_server import AppServer
from tests.support.backend_auth_server import BackendAuthServer
from tests.support.oidc_server import OidcServer, behave

INVALID = grpc.StatusCode.INVALID_ARGUMENT
# 2106-02-07T06:28:15Z, the last second a uint32 of Unix seconds holds.
UINT32_END = 2**32 - 1
CENTURY = 100 * 365 * 86400


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None, error
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in status.details), status
    return info


async def test_a_6_kb_connection_id_is_refused_by_name_on_every_method(
    services: Services,
) -> None:
    huge = "c" * 6000
    stub = connections(services)
    for method, request in [
        (stub.GetToken, connections_pb2.GetTokenRequest(connection_id=huge)),
        (stub.CheckConnection, connections_pb2.CheckConnectionRequest(connection_id=huge)),
        (stub.RefreshConnection, connections_pb2.RefreshConnectionRequest(connection_id=huge)),
        (stub.RevokeConnection, connections_pb2.RevokeConnectionRequest(connection_id=huge)),
        (stub.DeleteConnection, connections_pb2.DeleteConnectionRequest(connection_id=huge)),
    ]:
        message = await expect_error(method(request, metadata=ADMIN), INVALID, "VALIDATION_FAILED")
        assert "connection_id is longer than 255 characters" in message and huge not in message


async def test_ids_of_every_kind_are_bounded(services: Services) -> None:
    huge = "x" * 300
    await expect_error(
        gateway_pb2_grpc.ProviderServiceStub(services.gateway).GetProvider(
            providers_pb2.GetProviderRequest(id=huge), metadata=ADMIN
        ),
        INVALID,
        "VALIDATION_FAILED",
    )
    await expect_error(
        agents(services).GetAgent(agents_pb2.GetAgentRequest(agent_id=huge), metadata=ADMIN),
        INVALID,
        "VALIDATION_FAILED",
    )
    await expect_error(
        connections(services).ListConnections(
            connections_pb2.ListConnectionsRequest(workspace_id=huge), metadata=ADMIN
        ),
        INVALID,
        "VALIDATION_FAILED",
    )
    # Nested in a body: the field is named by its path.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sessions(services).CreateAgentSession(
            agent_session(agent_id="a", provider="p", scopes=["s"], workspace_id=huge),
            metadata=ADMIN,
        )
    assert error_info(caught.value).metadata["field"] == "session.workspace_id"


async def test_an_unknown_id_is_echoed_clipped(services: Services) -> None:
    longest = "c" * 255
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await token(services, longest)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).reason == "CONNECTION_NOT_FOUND"
    assert len(caught.value.details() or "") <= 1024


def _unsigned_token(position: object, query: dict[str, object]) -> str:
    """A page token in the old unsigned format, with a fingerprint a forger can compute."""
    import hashlib

    fingerprint = hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:16]
    payload = json.dumps({"p": position, "q": fingerprint}).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


async def test_forged_page_tokens_are_refused_on_every_list(services: Services) -> None:
    providers = gateway_pb2_grpc.ProviderServiceStub(services.gateway)
    audit = gateway_pb2_grpc.AuditServiceStub(services.gateway)
    provider_filters = {"category": "", "auth_type": "", "show_deleted": False}
    forgeries = [
        _unsigned_token(["not a date", 1], {"workspace_id": "w"}),
        _unsigned_token(["not a date", 1], {"resource": ""}),
        _unsigned_token([{"nested": 1}], provider_filters),
        _unsigned_token([], {}),
        "garbage!",
        "e30." + "A" * 22,
        "t" * 2000,
    ]
    for forged in forgeries:
        for call in (
            connections(services).ListConnections(
                connections_pb2.ListConnectionsRequest(workspace_id="w", page_token=forged),
                metadata=ADMIN,
            ),
            audit.ListAuditEvents(
                audit_pb2.ListAuditEventsRequest(page_token=forged), metadata=ADMIN
            ),
            providers.ListProviders(
                providers_pb2.ListProvidersRequest(page_token=forged), metadata=ADMIN
            ),
            agents(services).ListAgents(
                agents_pb2.ListAgentsRequest(page_token=forged), metadata=ADMIN
            ),
        ):
            reason = "VALIDATION_FAILED" if len(forged) > 1024 else "INVALID_PAGE_TOKEN"
            await expect_error(call, INVALID, reason)


async def test_genuine_page_tokens_still_page(services: Services) -> None:
    for name in ("alpha", "beta", "gamma"):
        await register(services, providers_pb2.Provider(name=name, auth_type="nexus", scopes=["x"]))
    stub = gateway_pb2_grpc.ProviderServiceStub(services.gateway)
    seen: list[str] = []
    page_token = ""
    while True:
        page = await stub.ListProviders(
            providers_pb2.ListProvidersRequest(page_size=1, page_token=page_token), metadata=ADMIN
        )
        seen += [p.name for p in page.providers]
        page_token = page.next_page_token
        if not page_token:
            break
    assert seen == ["alpha", "beta", "gamma"]


# A GetTokenRequest whose connection_id is not UTF-8, one whose bytes end
# mid-field, and one with a field of an undefined wire type.
UNDECODABLE = [b"\x0a\x02\xff\xfe", b"\x0a\x10abc", b"\x0f\x01"]


def _raw_call(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


@pytest.mark.parametrize("body", UNDECODABLE, ids=["not-utf8", "truncated", "bad-wire-type"])
async def test_an_undecodable_request_gets_malformed_request_from_every_service(
    services: Services, body: bytes
) -> None:
    internal = ((INTERNAL_TOKEN_HEADER, INTERNAL_TOKEN),)
    broker = grpc.aio.insecure_channel(f"127.0.0.1:{services.broker_port}")
    policy = grpc.aio.insecure_channel(f"127.0.0.1:{services.policy_port}")
    try:
        for channel, method, metadata in [
            (services.gateway, "/nexus.gateway.v1.ConnectionService/GetToken", ADMIN),
            (broker, "/nexus.broker.v1.ConnectionService/GetToken", internal),
            (policy, "/nexus.policy.v1.AgentRegistryService/GetAgent", internal),
        ]:
            message = await expect_error(
                _raw_call(channel, method)(body, metadata=metadata), INVALID, "MALFORMED_REQUEST"
            )
            assert "could not be decoded" in message
    finally:
        await broker.close()
        await policy.close()


async def test_an_undecodable_request_without_a_credential_is_still_unauthenticated(
    services: Services,
) -> None:
    await expect_error(
        _raw_call(services.gateway, "/nexus.gateway.v1.ConnectionService/GetToken")(UNDECODABLE[0]),
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )


@pytest.mark.parametrize("field", ["user_id", "tenant_id"])
async def test_obo_user_fields_over_255_characters_are_refused_by_name(
    services: Services, backend: BackendAuthServer, field: str
) -> None:
    await register_internal_ops(services)
    key = await register_agent(services, "ops-agent", ["acme:gliding"])
    user = {"user_id": "alice", "tenant_id": "acme"} | {field: "u" * 256}
    user_token = backend.issue_token(
        user["user_id"], tenant_id=user["tenant_id"], permissions=["acme:gliding"]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sessions(services).CreateOboSession(gliding(user_token), metadata=bearer(key))
    assert caught.value.code() == INVALID
    info = error_info(caught.value)
    assert info.reason == "USER_CONTEXT_INVALID" and info.metadata["field"] == field
    # Exactly 255 fits.
    fitting = backend.issue_token("u" * 255, tenant_id="t" * 255, permissions=["acme:gliding"])
    session = await sessions(services).CreateOboSession(gliding(fitting), metadata=bearer(key))
    assert session.acting_for == "u" * 255 and session.tenant_id == "t" * 255


async def test_a_denial_for_a_255_character_agent_id_is_audited(services: Services) -> None:
    await register_internal_ops(services)
    long_agent = "a" * 255
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sessions(services).CreateAgentSession(
            agent_session(agent_id=long_agent, provider="internal-ops", scopes=["acme:gliding"]),
            metadata=ADMIN,
        )
    assert caught.value.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
    events = await gateway_pb2_grpc.AuditServiceStub(services.gateway).ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(page_size=100), metadata=ADMIN
    )
    denied = [e for e in events.audit_events if e.action == "session.denied"]
    assert len(denied) == 1
    details = json_format.MessageToDict(denied[0].details)
    assert details["agent_id"] == long_agent
    assert denied[0].resource.startswith("agents/aaa") and len(denied[0].resource) <= 255
    assert denied[0].resource.endswith("(262 characters)")


async def _connect_with_expires_in(
    services: Services, idp: OidcServer, app: AppServer, expires_in: object
) -> tuple[str, str]:
    """Connect through the real redirect flow while the provider answers
    ``expires_in``; the app's landing status and the connection id."""
    behave(idp, expires_in=expires_in)
    await register_idp(services, idp)
    started = await start(services, f"{app.url}/done", scopes=("openid", "contacts:read"))
    async with httpx.AsyncClient(follow_redirects=True, timeout=30) as browser:
        landing = await browser.get(started.auth_url)
    assert landing.status_code == 200, landing.text
    return str(landing.url), started.connection_id


@pytest.mark.parametrize(
    "expires_in", [1e300, "1e400", 10**30, "99999999999"], ids=["1e300", "1e400", "1e30", "text"]
)
async def test_a_huge_expires_in_is_capped_and_its_expiry_past_2106_is_served(
    services: Services, idp: OidcServer, app: AppServer, expires_in: object
) -> None:
    landed, connection_id = await _connect_with_expires_in(services, idp, app, expires_in)
    assert "status=success" in landed
    payload = await token(services, connection_id)
    # A century from now is past 2106: a uint32 could not carry it.
    assert payload.expires_at > UINT32_END
    assert abs(payload.expires_at - (time.time() + CENTURY)) < 120
    assert payload.expires_at == int(payload.expires_at)
    assert datetime.fromtimestamp(payload.expires_at, UTC).year > 2106


@pytest.mark.parametrize("expires_in", [-1, "-5", "NaN", "Infinity", True, "0x10", [3600]])
async def test_an_expires_in_that_is_not_a_lifetime_fails_the_connection_not_the_server(
    services: Services, idp: OidcServer, app: AppServer, expires_in: object
) -> None:
    landed, connection_id = await _connect_with_expires_in(services, idp, app, expires_in)
    assert "status=error" in landed
    await expect_error(
        token(services, connection_id),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CONNECTION_NOT_ACTIVE",
    )
