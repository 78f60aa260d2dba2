"""Two policy replicas on one database: a change made through one reaches the
other's access decisions within NEXUS_POLICY_AGENT_CACHE_SECONDS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from nexus.policy.v1 import agents_pb2, agents_pb2_grpc, policy_pb2, policy_pb2_grpc

from tests.conftest import INTERNAL_TOKEN, service_env
from tests.integration.helpers import expect_error

CACHE_SECONDS = 0.5
INTERNAL = (("x-nexus-internal-token", INTERNAL_TOKEN),)


@pytest.fixture
async def replicas(database_url: str, keyring_spec: str) -> AsyncIterator[list[grpc.aio.Channel]]:
    from nexus_policy.server import create_policy, migrate_database
    from nexus_policy.settings import PolicySettings

    migrate_database(database_url)
    env = service_env(
        database_url,
        keyring_spec,
        NEXUS_ENVIRONMENT="production",
        NEXUS_POLICY_AGENT_CACHE_SECONDS=str(CACHE_SECONDS),
    )
    policies = [create_policy(PolicySettings.from_env(env)) for _ in range(2)]
    channels = []
    for policy in policies:
        await policy.server.start()
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{policy.server.port}"))
    try:
        yield channels
    finally:
        for channel in channels:
            await channel.close()
        for policy in policies:
            await policy.server.stop(0)
            await policy.close()


def _get_token(workspace: str) -> policy_pb2.AccessRequest:
    return policy_pb2.AccessRequest(
        action=policy_pb2.AccessRequest.ACTION_GET_TOKEN,
        caller=policy_pb2.Principal(kind=policy_pb2.Principal.KIND_AGENT, id="crm-agent"),
        provider_id="p1",
        provider_name="crm",
        connection=policy_pb2.ConnectionRef(connection_id="c1", workspace_id=workspace),
    )


def _bound(*workspaces: str) -> agents_pb2.Agent:
    return agents_pb2.Agent(
        agent_id="crm-agent",
        allowed_scopes=["crm:read"],
        bindings=agents_pb2.AgentBindings(providers=["crm"], workspaces=list(workspaces)),
    )


async def test_a_rebinding_reaches_every_replica_within_the_cache_bound(
    replicas: list[grpc.aio.Channel],
) -> None:
    writer = agents_pb2_grpc.AgentRegistryServiceStub(replicas[0])
    reader = policy_pb2_grpc.PolicyServiceStub(replicas[1])
    await writer.CreateAgent(
        agents_pb2.CreateAgentRequest(agent=_bound("alice")), metadata=INTERNAL
    )
    # The other replica reads the agent now, and keeps it for its hot path.
    await expect_error(
        reader.AuthorizeAccess(_get_token("bob"), metadata=INTERNAL),
        grpc.StatusCode.PERMISSION_DENIED,
        "WORKSPACE_NOT_BOUND",
    )

    await writer.UpdateAgent(
        agents_pb2.UpdateAgentRequest(agent=_bound("alice", "bob")), metadata=INTERNAL
    )
    await asyncio.sleep(CACHE_SECONDS + 0.1)

    allowed = await reader.AuthorizeAccess(_get_token("bob"), metadata=INTERNAL)
    assert allowed.agent_id == "crm-agent"


async def test_a_disabled_agent_is_refused_by_every_replica_within_the_cache_bound(
    replicas: list[grpc.aio.Channel],
) -> None:
    writer = agents_pb2_grpc.AgentRegistryServiceStub(replicas[0])
    reader = policy_pb2_grpc.PolicyServiceStub(replicas[1])
    await writer.CreateAgent(
        agents_pb2.CreateAgentRequest(agent=_bound("alice")), metadata=INTERNAL
    )
    assert (await reader.AuthorizeAccess(_get_token("alice"), metadata=INTERNAL)).agent_id

    await writer.UpdateAgent(
        agents_pb2.UpdateAgentRequest(agent=agents_pb2.Agent(agent_id="crm-agent", enabled=False)),
        metadata=INTERNAL,
    )
    await asyncio.sleep(CACHE_SECONDS + 0.1)

    await expect_error(
        reader.AuthorizeAccess(_get_token("alice"), metadata=INTERNAL),
        grpc.StatusCode.PERMISSION_DENIED,
        "AGENT_DISABLED",
    )
