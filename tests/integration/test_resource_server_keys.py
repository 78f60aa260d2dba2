"""Resource-server keys over gRPC through the gateway: the service behind a
provider introspects the session tokens sent to it (RFC 7662 §2.1) without an
admin key, and reaches nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from nexus.broker.v1 import providers_pb2, sessions_pb2
from nexus.gateway.v1 import gateway_pb2
from nexus_gateway.auth import PUBLIC_METHODS, RESOURCE_SERVER_METHODS

from tests.conftest import Services
from tests.integration.helpers import expect_error
from tests.integration.test_connections import register
from tests.integration.test_sessions import (
    agent_session,
    bearer,
    register_agent,
    register_internal_ops,
    sessions,
)

OPS_KEY = "nxrs_internal_ops_0123456789abcdefghij"
BILLING_KEY = "nxrs_billing_ops_0123456789abcdefghij"
NEXT_OPS_KEY = "nxrs_internal_ops_next_0123456789abcd"


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """SQLite only: nothing here is about storage."""
    yield f"sqlite:///{tmp_path / 'nexus.db'}"


@pytest.fixture
def service_overrides() -> dict[str, str]:
    return {
        "NEXUS_RESOURCE_SERVER_KEYS": (
            f"internal-ops:{OPS_KEY},billing-ops:{BILLING_KEY},internal-ops:{NEXT_OPS_KEY}"
        )
    }


def api_key(key: str) -> tuple[tuple[str, str]]:
    return (("x-api-key", key),)


async def introspect(
    services: Services, token: str, key: str
) -> sessions_pb2.IntrospectSessionResponse:
    return await sessions(services).IntrospectSession(
        gateway_pb2.IntrospectSessionRequest(
            introspection=sessions_pb2.IntrospectSessionRequest(token=token)
        ),
        metadata=api_key(key),
    )


async def session_tokens(services: Services) -> tuple[str, str]:
    """A session token for internal-ops and one for billing-ops, of one agent."""
    await register_internal_ops(services)
    await register(
        services,
        providers_pb2.Provider(name="billing-ops", auth_type="nexus", scopes=["billing:read"]),
    )
    key = await register_agent(services, "ops-agent", ["acme:gliding", "billing:read"])
    tokens = []
    for provider, scope in (("internal-ops", "acme:gliding"), ("billing-ops", "billing:read")):
        session = await sessions(services).CreateAgentSession(
            agent_session(agent_id="ops-agent", provider=provider, scopes=[scope]),
            metadata=bearer(key),
        )
        tokens.append(session.session_token)
    return tokens[0], tokens[1]


async def test_a_resource_server_key_introspects_only_its_providers_tokens(
    services: Services,
) -> None:
    ops_token, billing_token = await session_tokens(services)

    for key in (OPS_KEY, NEXT_OPS_KEY):
        ops = await introspect(services, ops_token, key)
        assert ops.active and ops.aud == "internal-ops" and ops.scope == "acme:gliding"
        assert ops.client_id == "ops-agent"
    billing = await introspect(services, billing_token, BILLING_KEY)
    assert billing.active and billing.aud == "billing-ops"
    # Another provider's token is reported inactive, exactly as one that
    # does not exist (RFC 7662 §2.2), so the answer tells nothing about it.
    inactive = sessions_pb2.IntrospectSessionResponse(active=False)
    assert await introspect(services, billing_token, OPS_KEY) == inactive
    assert await introspect(services, ops_token, BILLING_KEY) == inactive
    assert await introspect(services, "not-a-jwt", OPS_KEY) == inactive


async def test_a_wrong_resource_server_key_is_unauthenticated(services: Services) -> None:
    ops_token, _ = await session_tokens(services)
    await expect_error(
        introspect(services, ops_token, OPS_KEY[:-1]),
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )


def other_methods() -> list[str]:
    """Every gateway method but introspection and the public JWK Set."""
    methods = []
    for service in gateway_pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            if path not in RESOURCE_SERVER_METHODS | PUBLIC_METHODS:
                methods.append(path)
    return methods


async def test_a_resource_server_key_reaches_no_other_method(services: Services) -> None:
    methods = other_methods()
    assert "/nexus.gateway.v1.ConnectionService/GetToken" in methods
    for path in methods:
        service_name, method_name = path.strip("/").split("/")
        service = gateway_pb2.DESCRIPTOR.services_by_name[service_name.rpartition(".")[2]]
        request_type = message_factory.GetMessageClass(
            service.methods_by_name[method_name].input_type
        )
        call = services.gateway.unary_unary(
            path,
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=lambda data: data,
        )
        message = await expect_error(
            call(request_type(), metadata=api_key(OPS_KEY)),
            grpc.StatusCode.PERMISSION_DENIED,
            "CALLER_NOT_ALLOWED",
        )
        assert "only introspect" in message, path
