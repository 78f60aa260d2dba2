"""Two policy replicas on one PostgreSQL database: a change made through one
reaches the other's access decisions through the database's change notice,
well within the backstop age (NEXUS_CACHE_MAX_AGE_SECONDS), and each replica
passes the changes it hears on to whoever watches it, with the internal token
only. SQLite is one process by design, so these run on PostgreSQL alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nexus.policy.v1 import agents_pb2, agents_pb2_grpc, policy_pb2, policy_pb2_grpc

from tests.conftest import INTERNAL_TOKEN, service_env
from tests.integration.helpers import expect_error
from tests.integration.test_credential_cache import via
from tests.support.tcp_proxy import TcpProxy

# Far longer than any test here: what a replica sees, it sees through the notice.
BACKSTOP_SECONDS = 60
# How soon the other replica must act on a change (notices take milliseconds).
BOUND_SECONDS = 2.0
INTERNAL = (("x-nexus-internal-token", INTERNAL_TOKEN),)


@pytest.fixture
async def replicas(pg_url: str, keyring_spec: str) -> AsyncIterator[list[grpc.aio.Channel]]:
    from nexus_policy.server import create_policy, migrate_database
    from nexus_policy.settings import PolicySettings

    migrate_database(pg_url)
    env = service_env(
        pg_url,
        keyring_spec,
        NEXUS_ENVIRONMENT="production",
        NEXUS_CACHE_MAX_AGE_SECONDS=str(BACKSTOP_SECONDS),
    )
    policies = [create_policy(PolicySettings.from_env(env)) for _ in range(2)]
    channels = []
    for policy in policies:
        await policy.start_caches()
        assert policy.listener is not None and policy.listener.listening
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


async def _within_bound(check: Callable[[], Awaitable[bool]]) -> float:
    """Seconds until ``check()`` holds; fails past BOUND_SECONDS."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started <= BOUND_SECONDS, "the change was not seen in time"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def _allowed(reader: policy_pb2_grpc.PolicyServiceStub, workspace: str) -> bool:
    try:
        await reader.AuthorizeAccess(_get_token(workspace), metadata=INTERNAL)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
        return False
    return True


async def test_a_rebinding_reaches_the_other_replica_through_its_notice(
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

    async def bob_allowed() -> bool:
        return await _allowed(reader, "bob")

    await _within_bound(bob_allowed)


async def test_a_disabled_agent_is_refused_by_the_other_replica_through_its_notice(
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

    async def alice_refused() -> bool:
        return not await _allowed(reader, "alice")

    await _within_bound(alice_refused)
    await expect_error(
        reader.AuthorizeAccess(_get_token("alice"), metadata=INTERNAL),
        grpc.StatusCode.PERMISSION_DENIED,
        "AGENT_DISABLED",
    )


def _watch(channel: grpc.aio.Channel, metadata: Any = INTERNAL) -> Any:
    return policy_pb2_grpc.PolicyServiceStub(channel).WatchAgentChanges(
        policy_pb2.WatchAgentChangesRequest(), metadata=metadata
    )


async def test_a_replica_passes_on_every_change_it_hears_to_its_watchers(
    replicas: list[grpc.aio.Channel],
) -> None:
    watch = _watch(replicas[1])
    notices = aiter(watch)
    try:
        assert (await anext(notices)).ready
        writer = agents_pb2_grpc.AgentRegistryServiceStub(replicas[0])
        await writer.CreateAgent(
            agents_pb2.CreateAgentRequest(agent=_bound("alice")), metadata=INTERNAL
        )
        # Written through the other replica: heard from the database.
        async with asyncio.timeout(BOUND_SECONDS):
            notice = await anext(notices)
        assert notice.agent_id == "crm-agent" and not notice.ready
    finally:
        watch.cancel()


async def test_the_change_feed_needs_the_internal_token(
    replicas: list[grpc.aio.Channel],
) -> None:
    for metadata in ((), (("x-nexus-internal-token", "not-the-token"),)):
        watch = _watch(replicas[1], metadata)
        await expect_error(anext(aiter(watch)), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


async def test_a_probe_still_watches_health_without_a_credential(
    replicas: list[grpc.aio.Channel],
) -> None:
    watch = health_pb2_grpc.HealthStub(replicas[1]).Watch(health_pb2.HealthCheckRequest())
    try:
        answer = await anext(aiter(watch))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        watch.cancel()


async def test_a_replica_that_stops_hearing_the_database_ends_its_watches(
    replicas: list[grpc.aio.Channel], pg_url: str
) -> None:
    watch = _watch(replicas[1])
    notices = aiter(watch)
    assert (await anext(notices)).ready
    # The listeners' connections end, as in a database restart.
    conninfo = pg_url.replace("postgresql+psycopg://", "postgresql://")
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'nexus change listener' AND datname = current_database()"
        )
    async with asyncio.timeout(BOUND_SECONDS):
        await expect_error(anext(notices), grpc.StatusCode.UNAVAILABLE, "CHANGE_FEED_UNAVAILABLE")
    # Once it listens again (a moment later), watches start again.
    async with asyncio.timeout(10):
        while True:
            again = _watch(replicas[1])
            try:
                if (await anext(aiter(again))).ready:
                    break
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                await asyncio.sleep(0.05)
            finally:
                again.cancel()


async def test_a_replica_whose_listener_goes_silent_stops_granting_a_disabled_agent(
    pg_url: str, keyring_spec: str
) -> None:
    """The reading replica's listener reaches PostgreSQL through a proxy that
    stops forwarding its connection without a word, so the disable written
    through the other replica is never heard. Its heartbeat, not heard back,
    ends its watches (the gateways and brokers that follow it turn their own
    caches off) and drops the agents it cached: the next decision reads the
    disabled agent, an hour before the backstop would have."""
    from nexus_policy.server import create_policy, migrate_database
    from nexus_policy.settings import PolicySettings

    migrate_database(pg_url)
    upstream = urlsplit(pg_url)
    env = service_env(
        pg_url,
        keyring_spec,
        NEXUS_ENVIRONMENT="production",
        NEXUS_CACHE_MAX_AGE_SECONDS="3600",
        NEXUS_LISTENER_HEARTBEAT_SECONDS="0.2",
    )
    with TcpProxy(upstream.hostname or "127.0.0.1", upstream.port or 5432) as proxy:
        policies = [
            create_policy(PolicySettings.from_env(env)),
            create_policy(
                PolicySettings.from_env(env | {"NEXUS_POLICY_DATABASE_URL": via(proxy, pg_url)})
            ),
        ]
        for policy in policies:
            await policy.start_caches()
            await policy.server.start()
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p.server.port}") for p in policies]
        watch = _watch(channels[1])
        try:
            writer = agents_pb2_grpc.AgentRegistryServiceStub(channels[0])
            reader = policy_pb2_grpc.PolicyServiceStub(channels[1])
            await writer.CreateAgent(
                agents_pb2.CreateAgentRequest(agent=_bound("alice")), metadata=INTERNAL
            )
            assert await _allowed(reader, "alice")
            notices = aiter(watch)
            assert (await anext(notices)).ready
            # Only the listener's connection is open through the proxy when it
            # goes silent: the reader's queries use new ones, which it forwards.
            await policies[1].engine.dispose()
            proxy.stall()

            disabled = agents_pb2.Agent(agent_id="crm-agent", enabled=False)
            await writer.UpdateAgent(
                agents_pb2.UpdateAgentRequest(agent=disabled), metadata=INTERNAL
            )

            async with asyncio.timeout(30):
                while (notice := await _next_or_unavailable(notices)) is not None:
                    # The create, heard before the silence, or the feed's heartbeat.
                    assert notice.agent_id in ("crm-agent", "")
            await expect_error(
                reader.AuthorizeAccess(_get_token("alice"), metadata=INTERNAL),
                grpc.StatusCode.PERMISSION_DENIED,
                "AGENT_DISABLED",
            )
        finally:
            watch.cancel()
            for channel in channels:
                await channel.close()
            for policy in policies:
                await policy.server.stop(0)
                await policy.close()


async def _next_or_unavailable(notices: Any) -> Any:
    """The watch's next notice, or None once it ends because the replica stopped hearing."""
    try:
        return await anext(notices)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        return None
