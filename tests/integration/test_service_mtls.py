"""Service hops with mutual TLS on, as deploy/k8s runs them: each service has its
own certificate (tools/devcerts), calls only what its allowlist names, and the
broker and the policy service believe a caller only with the gateway's proof.

Every refusal below was served before mutual TLS existed: the internal token
alone, a bare ``x-nexus-caller``, and reflection on every port were all accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from nexus.broker.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    connections_pb2,
    connections_pb2_grpc,
    providers_pb2,
    providers_pb2_grpc,
    sessions_pb2,
    sessions_pb2_grpc,
)
from nexus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from nexus.policy.v1 import agents_pb2, agents_pb2_grpc
from nexus_common import (
    CALLER_HEADER,
    CALLER_PROOF_HEADER,
    INTERNAL_TOKEN_HEADER,
    Caller,
    CallerProofs,
)

from tests.conftest import INTERNAL_TOKEN, Services
from tests.integration.helpers import ADMIN, expect_error
from tools.devcerts import SERVICES, write_set

INTERNAL = ((INTERNAL_TOKEN_HEADER, INTERNAL_TOKEN),)
GET_TOKEN = "/nexus.broker.v1.ConnectionService/GetToken"
CREATE_AGENT = "/nexus.policy.v1.AgentRegistryService/CreateAgent"
RECORD_AUDIT = "/nexus.broker.v1.AuditLogService/RecordAuditEvents"
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    write_set(directory)
    # The same names from an authority nobody trusts.
    write_set(directory / "stranger")
    return directory


@pytest.fixture
def per_service_overrides(certs: Path) -> dict[str, dict[str, str]]:
    return {
        service: {
            "NEXUS_TLS_CERT_FILE": str(certs / f"{service}.pem"),
            "NEXUS_TLS_KEY_FILE": str(certs / f"{service}-key.pem"),
            "NEXUS_TLS_CA_FILE": str(certs / "ca.pem"),
            "NEXUS_HEALTH_LISTEN": "127.0.0.1:0",
        }
        for service in SERVICES
    }


def _port(services: Services, hop: str) -> int:
    return services.broker_port if hop == "broker" else services.policy_port


def tls_channel(certs: Path, port: int, server: str, identity: str | None) -> grpc.aio.Channel:
    """A channel to ``server`` presenting ``identity``'s certificate (None: no certificate)."""
    ca = (certs / "ca.pem").read_bytes()
    if identity is None:
        credentials = grpc.ssl_channel_credentials(ca)
    else:
        credentials = grpc.ssl_channel_credentials(
            ca,
            (certs / f"{identity}-key.pem").read_bytes(),
            (certs / f"{identity}.pem").read_bytes(),
        )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", server)]
    )


def _probe(hop: str, channel: grpc.aio.Channel, metadata: Any) -> Awaitable[Any]:
    """A call any service would make of ``hop``, with ``metadata``."""
    if hop == "broker":
        return connections_pb2_grpc.ConnectionServiceStub(channel).GetToken(
            connections_pb2.GetTokenRequest(connection_id="c-1"), metadata=metadata, timeout=30
        )
    return agents_pb2_grpc.AgentRegistryServiceStub(channel).GetAgent(
        agents_pb2.GetAgentRequest(agent_id="a-1"), metadata=metadata, timeout=30
    )


@pytest.fixture
async def opened() -> AsyncIterator[Callable[[grpc.aio.Channel], grpc.aio.Channel]]:
    channels: list[grpc.aio.Channel] = []

    def keep(channel: grpc.aio.Channel) -> grpc.aio.Channel:
        channels.append(channel)
        return channel

    yield keep
    for channel in channels:
        await channel.close()


@pytest.mark.parametrize("hop", ["broker", "policy"])
@pytest.mark.parametrize("client", ["plaintext", "tls-without-certificate", "untrusted-ca"])
async def test_the_internal_token_without_a_trusted_certificate_is_refused_on_each_hop(
    services: Services,
    certs: Path,
    hop: str,
    client: str,
    opened: Callable[[grpc.aio.Channel], grpc.aio.Channel],
) -> None:
    port = _port(services, hop)
    if client == "plaintext":
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    elif client == "tls-without-certificate":
        channel = tls_channel(certs, port, hop, None)
    else:
        # Its gateway certificate is signed by another CA; it does trust ours.
        stranger = certs / "stranger"
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{port}",
            grpc.ssl_channel_credentials(
                (certs / "ca.pem").read_bytes(),
                (stranger / "gateway-key.pem").read_bytes(),
                (stranger / "gateway.pem").read_bytes(),
            ),
            options=[("grpc.ssl_target_name_override", hop)],
        )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _probe(hop, opened(channel), INTERNAL)
    # The handshake fails: the call never reaches the service.
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("identity", "hop", "call"),
    [
        (
            "policy",
            "broker",
            lambda ch, md: connections_pb2_grpc.ConnectionServiceStub(ch).GetToken(
                connections_pb2.GetTokenRequest(connection_id="c-1"), metadata=md
            ),
        ),
        (
            "policy",
            "broker",
            lambda ch, md: providers_pb2_grpc.ProviderRegistryServiceStub(ch).ListProviders(
                providers_pb2.ListProvidersRequest(), metadata=md
            ),
        ),
        (
            "broker",
            "policy",
            lambda ch, md: agents_pb2_grpc.AgentRegistryServiceStub(ch).CreateAgent(
                agents_pb2.CreateAgentRequest(agent=agents_pb2.Agent(agent_id="everything")),
                metadata=md,
            ),
        ),
        (
            "gateway",
            "broker",
            lambda ch, md: sessions_pb2_grpc.SessionServiceStub(ch).EndAgentSessions(
                sessions_pb2.EndAgentSessionsRequest(agent_id="ops-agent"), metadata=md
            ),
        ),
        (
            "gateway",
            "broker",
            lambda ch, md: audit_pb2_grpc.AuditLogServiceStub(ch).RecordAuditEvents(
                audit_pb2.RecordAuditEventsRequest(), metadata=md
            ),
        ),
    ],
    ids=[
        "policy-GetToken",
        "policy-ListProviders",
        "broker-CreateAgent",
        "gateway-EndAgentSessions",
        "gateway-RecordAuditEvents",
    ],
)
async def test_a_service_calling_a_method_off_its_allowlist_is_refused(
    services: Services,
    certs: Path,
    identity: str,
    hop: str,
    call: Callable[[grpc.aio.Channel, Any], Awaitable[Any]],
    opened: Callable[[grpc.aio.Channel], grpc.aio.Channel],
) -> None:
    channel = opened(tls_channel(certs, _port(services, hop), hop, identity))
    message = await expect_error(call(channel, INTERNAL), DENIED, "SERVICE_METHOD_NOT_ALLOWED")
    assert identity in message


@pytest.mark.parametrize("hop", ["broker", "policy"])
async def test_a_bare_caller_claim_is_refused_on_each_hop_even_from_the_gateway(
    services: Services,
    certs: Path,
    hop: str,
    opened: Callable[[grpc.aio.Channel], grpc.aio.Channel],
) -> None:
    channel = opened(tls_channel(certs, _port(services, hop), hop, "gateway"))
    bare = (*INTERNAL, (CALLER_HEADER, "admin:tests"))
    await expect_error(_probe(hop, channel, bare), UNAUTHENTICATED, "CALLER_PROOF_INVALID")
    # A proof made for another method does not carry over.
    other = CallerProofs(INTERNAL_TOKEN).prove(Caller("admin", "tests"), "/nexus.x.v1.S/Other")
    await expect_error(
        _probe(hop, channel, (*bare, (CALLER_PROOF_HEADER, other))),
        UNAUTHENTICATED,
        "CALLER_PROOF_INVALID",
    )


async def test_only_the_gateway_may_name_a_caller_whatever_proof_another_service_has(
    services: Services,
    certs: Path,
    opened: Callable[[grpc.aio.Channel], grpc.aio.Channel],
) -> None:
    # The policy service holds the internal token, so it could make a proof: its
    # certificate still says it is not the gateway.
    channel = opened(tls_channel(certs, services.broker_port, "broker", "policy"))
    proof = CallerProofs(INTERNAL_TOKEN).prove(Caller("admin", "tests"), RECORD_AUDIT)
    claimed = (*INTERNAL, (CALLER_HEADER, "admin:tests"), (CALLER_PROOF_HEADER, proof))
    await expect_error(
        audit_pb2_grpc.AuditLogServiceStub(channel).RecordAuditEvents(
            audit_pb2.RecordAuditEventsRequest(), metadata=claimed
        ),
        UNAUTHENTICATED,
        "CALLER_PROOF_INVALID",
    )
    # As itself, it may.
    recorded = await audit_pb2_grpc.AuditLogServiceStub(channel).RecordAuditEvents(
        audit_pb2.RecordAuditEventsRequest(), metadata=INTERNAL
    )
    assert recorded.recorded == 0


async def test_every_hop_works_over_mutual_tls(services: Services) -> None:
    gateway = services.gateway
    await gateway_pb2_grpc.ProviderServiceStub(gateway).CreateProvider(
        gateway_pb2.CreateProviderRequest(
            provider=providers_pb2.Provider(
                name="internal-ops", auth_type="nexus", scopes=["acme:gliding"]
            )
        ),
        metadata=ADMIN,
    )
    # gateway → policy, with the admin's proof.
    agents = gateway_pb2_grpc.AgentServiceStub(gateway)
    created = await agents.CreateAgent(
        gateway_pb2.CreateAgentRequest(
            agent=agents_pb2.Agent(agent_id="ops-agent", allowed_scopes=["acme:gliding"])
        ),
        metadata=ADMIN,
    )
    # gateway → policy (the agent's key), gateway → broker, broker → policy (the decision).
    session = await gateway_pb2_grpc.SessionServiceStub(gateway).CreateAgentSession(
        gateway_pb2.CreateAgentSessionRequest(
            session=sessions_pb2.CreateAgentSessionRequest(
                agent_id="ops-agent", provider="internal-ops", scopes=["acme:gliding"]
            )
        ),
        metadata=(("authorization", f"Bearer {created.agent_key}"),),
    )
    assert session.session_id
    # policy → broker: disabling the agent ends its sessions.
    await agents.UpdateAgent(
        gateway_pb2.UpdateAgentRequest(agent_id="ops-agent", agent=agents_pb2.Agent(enabled=False)),
        metadata=ADMIN,
    )
    audit = gateway_pb2_grpc.AuditServiceStub(gateway)
    actors: dict[str, str] = {}
    # policy → broker again: its audit outbox is forwarded in the background.
    for _ in range(200):
        listed = await audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(page_size=100), metadata=ADMIN
        )
        actors = {e.action: e.actor for e in listed.audit_events}
        if "agent.create" in actors and "sessions.ended" in actors:
            break
        await asyncio.sleep(0.05)
    assert actors["agent.create"] == "admin:tests"
    # The policy service acts as itself: it names no caller it cannot prove.
    assert actors["sessions.ended"] == "service:policy"


async def test_reflection_is_served_by_the_gateway_only(
    services: Services,
    certs: Path,
    opened: Callable[[grpc.aio.Channel], grpc.aio.Channel],
) -> None:
    async def listed(channel: grpc.aio.Channel) -> list[str]:
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        return [s.name async for r in stream for s in r.list_services_response.service]

    assert "nexus.gateway.v1.ConnectionService" in await listed(services.gateway)
    for hop in ("broker", "policy"):
        channel = opened(tls_channel(certs, _port(services, hop), hop, "gateway"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await listed(channel)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_probes_reach_health_in_plaintext_on_the_health_port_only(
    services: Services, opened: Callable[[grpc.aio.Channel], grpc.aio.Channel]
) -> None:
    port = services.broker.server.health_port
    assert port is not None
    channel = opened(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # Nothing else is served there.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _probe("broker", channel, INTERNAL)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
