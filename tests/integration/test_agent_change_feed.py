"""A warm GetToken asks the policy service nothing, and a change to the agent
still reaches it within a bound: two policy replicas on one PostgreSQL
database, the gateway and the broker following replica B's change feed, every
change written through replica A (or straight into the database). Real
services on sockets, the real OAuth server from npm.

The bound asserted is BOUND_SECONDS; what it takes in practice is the notice's
latency (PostgreSQL NOTIFY to replica B, then B's stream to the gateway and
the broker), a few milliseconds on a quiet machine and some tens under load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from nexus.broker.v1 import connections_pb2
from nexus.policy.v1 import agents_pb2, agents_pb2_grpc
from prometheus_client import generate_latest

from tests.conftest import INTERNAL_TOKEN, Services, service_env
from tests.integration.helpers import peek
from tests.integration.test_connections import connections
from tests.integration.test_sessions import bearer, connect_crm, register_crm
from tests.support.app_server import AppServer
from tests.support.metrics import sample_sum
from tests.support.oidc_server import OidcServer
from tests.support.tcp_proxy import TcpProxy

# What a change may take to be honoured by the gateway and the broker.
BOUND_SECONDS = 2.0
# Far longer than any test: what is refused in time is refused because of a notice.
BACKSTOP_SECONDS = 60
INTERNAL = (("x-nexus-internal-token", INTERNAL_TOKEN),)
# A connection outside the agent's bindings reads to it as absent (NOT_FOUND).
REFUSED = {
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.NOT_FOUND,
}
AGENT = "crm-agent"


@dataclass
class Stack:
    services: Services
    # Replica A takes the admin's changes; the gateway and the broker watch B.
    writer: agents_pb2_grpc.AgentRegistryServiceStub
    policies: list[Any]
    gateway: Any
    broker: Any
    env: dict[str, str]
    database_url: str


async def _start_policy(env: dict[str, str]) -> Any:
    from nexus_policy.server import create_policy
    from nexus_policy.settings import PolicySettings

    policy = create_policy(PolicySettings.from_env(env))
    await policy.start_caches()
    await policy.server.start()
    return policy


@pytest.fixture
async def stack(pg_url: str, keyring_spec: str) -> AsyncIterator[Stack]:
    from nexus_broker.server import create_broker
    from nexus_broker.server import migrate_database as migrate_broker
    from nexus_broker.settings import BrokerSettings
    from nexus_gateway.server import create_gateway
    from nexus_gateway.settings import GatewaySettings
    from nexus_policy.server import migrate_database as migrate_policy

    from tools.devstack import free_port

    browser_port, broker_port = free_port(), free_port()
    env = service_env(
        pg_url,
        keyring_spec,
        NEXUS_ENVIRONMENT="production",
        NEXUS_CACHE_MAX_AGE_SECONDS=str(BACKSTOP_SECONDS),
        NEXUS_GATEWAY_HTTP_LISTEN=f"127.0.0.1:{browser_port}",
        NEXUS_PUBLIC_BASE_URL=f"http://127.0.0.1:{browser_port}",
        NEXUS_BROKER_LISTEN=f"127.0.0.1:{broker_port}",
        NEXUS_BROKER_TARGET=f"127.0.0.1:{broker_port}",
    )
    migrate_broker(pg_url)
    migrate_policy(pg_url)
    policies = [await _start_policy(env), await _start_policy(env)]
    env["NEXUS_POLICY_TARGET"] = f"127.0.0.1:{policies[1].server.port}"
    broker = create_broker(BrokerSettings.from_env(env))
    await broker.core.start_caches(wait_seconds=5)
    await broker.server.start()
    gateway = create_gateway(GatewaySettings.from_env(env))
    await gateway.start_caches(wait_seconds=5)
    await gateway.server.start()
    browser = asyncio.create_task(gateway.browser.serve())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.server.port}")
    writer_channel = grpc.aio.insecure_channel(f"127.0.0.1:{policies[0].server.port}")
    assert gateway.feed.ready and broker.core.feed.ready
    services = Services(
        channel,
        broker.server.port,
        policies[1].server.port,
        f"http://127.0.0.1:{browser_port}",
        env,
        broker,
    )
    try:
        yield Stack(
            services,
            agents_pb2_grpc.AgentRegistryServiceStub(writer_channel),
            policies,
            gateway,
            broker,
            env,
            pg_url,
        )
    finally:
        await channel.close()
        await writer_channel.close()
        gateway.browser.stop()
        await browser
        await gateway.server.stop(0)
        await gateway.close()
        await broker.server.stop(0)
        await broker.close()
        for policy in policies:
            await policy.server.stop(0)
            await policy.close()


def _policy_calls() -> dict[str, float]:
    """How often the policy replicas (both, in this process) answered each hop."""
    exposition = generate_latest().decode()
    return {
        method: sample_sum(exposition, "grpc_server_handled_total", grpc_method=method)
        for method in ("AuthenticateAgent", "AuthorizeAccess")
    }


def _bindings(*workspaces: str) -> agents_pb2.AgentBindings:
    return agents_pb2.AgentBindings(
        providers=["salesforce"], workspaces=list(workspaces), full_connection_access=True
    )


async def _agent(stack: Stack) -> str:
    created = await stack.writer.CreateAgent(
        agents_pb2.CreateAgentRequest(
            agent=agents_pb2.Agent(
                agent_id=AGENT, allowed_scopes=["crm:contacts:read"], bindings=_bindings("alice")
            )
        ),
        metadata=INTERNAL,
    )
    return created.agent_key


async def _get_token(stack: Stack, connection_id: str, key: str) -> Any:
    return await connections(stack.services).GetToken(
        connections_pb2.GetTokenRequest(connection_id=connection_id), metadata=bearer(key)
    )


async def _warm(stack: Stack, connection_id: str, key: str) -> None:
    """Warm calls are answered without a single policy call. The notice of the
    change just made may still be on its way (and drop what the first call
    cached), so a few rounds are allowed for it to land."""
    rounds = []
    for _ in range(5):
        before = _policy_calls()
        for _ in range(10):
            assert (await _get_token(stack, connection_id, key)).credentials["access_token"]
        rounds.append({m: n - before[m] for m, n in _policy_calls().items()})
        if rounds[-1] == {"AuthenticateAgent": 0, "AuthorizeAccess": 0}:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"warm calls still asked the policy service: {rounds}")


async def _refused_within_bound(stack: Stack, connection_id: str, key: str) -> float:
    """Seconds until GetToken with ``key`` is refused; fails past BOUND_SECONDS."""
    started = time.monotonic()
    while True:
        try:
            await _get_token(stack, connection_id, key)
        except grpc.aio.AioRpcError as error:
            assert error.code() in REFUSED, error.details()
            return time.monotonic() - started
        assert time.monotonic() - started <= BOUND_SECONDS, "a stale grant was still served"
        await asyncio.sleep(0.002)


async def _update(stack: Stack, agent: agents_pb2.Agent, *paths: str) -> None:
    request = agents_pb2.UpdateAgentRequest(agent=agent)
    request.update_mask.paths.extend(paths)
    await stack.writer.UpdateAgent(request, metadata=INTERNAL)


async def test_a_warm_get_token_asks_no_policy_and_every_change_is_honoured_within_the_bound(
    stack: Stack, oidc: OidcServer, app: AppServer
) -> None:
    await register_crm(stack.services, oidc)
    alice = await connect_crm(stack.services, app, "alice")
    key = await _agent(stack)
    taken: dict[str, float] = {}

    await _warm(stack, alice, key)
    await _update(stack, agents_pb2.Agent(agent_id=AGENT, enabled=False), "enabled")
    taken["disable"] = await _refused_within_bound(stack, alice, key)

    await _update(stack, agents_pb2.Agent(agent_id=AGENT, enabled=True), "enabled")
    await _warm(stack, alice, key)
    rotated = await stack.writer.RotateAgentKey(
        agents_pb2.RotateAgentKeyRequest(agent_id=AGENT, grace_period_seconds=0),
        metadata=INTERNAL,
    )
    taken["rotation"] = await _refused_within_bound(stack, alice, key)
    key = rotated.agent_key

    await _warm(stack, alice, key)
    await _update(stack, agents_pb2.Agent(agent_id=AGENT, bindings=_bindings("bob")), "bindings")
    taken["rebinding"] = await _refused_within_bound(stack, alice, key)
    print(f"refused after (s): {taken}")


async def test_a_key_past_its_grace_period_is_refused_though_it_was_cached(
    stack: Stack, oidc: OidcServer, app: AppServer
) -> None:
    await register_crm(stack.services, oidc)
    alice = await connect_crm(stack.services, app, "alice")
    old = await _agent(stack)
    rotated = await stack.writer.RotateAgentKey(
        agents_pb2.RotateAgentKeyRequest(agent_id=AGENT, grace_period_seconds=2),
        metadata=INTERNAL,
    )
    expires = rotated.previous_key_expire_time.ToDatetime().timestamp()
    # Within its grace the old key works, and is cached like any other.
    await _warm(stack, alice, old)
    await asyncio.sleep(max(0.0, expires - time.time()))
    taken = await _refused_within_bound(stack, alice, old)
    print(f"retired key refused {taken:.3f}s after its expiry")
    assert (await _get_token(stack, alice, rotated.agent_key)).credentials["access_token"]


async def test_while_the_feed_is_down_nothing_is_served_from_cache(
    stack: Stack, oidc: OidcServer, app: AppServer
) -> None:
    await register_crm(stack.services, oidc)
    alice = await connect_crm(stack.services, app, "alice")
    key = await _agent(stack)
    await _warm(stack, alice, key)

    # The replica the feed watches stops.
    watched = stack.policies[1]
    port = watched.server.port
    await watched.server.stop(0)
    await watched.close()
    async with asyncio.timeout(BOUND_SECONDS):
        while True:
            if not (stack.gateway.feed.ready or stack.broker.core.feed.ready):
                break
            await asyncio.sleep(0.01)
    # Nothing is answered from the caches: the policy service cannot be asked.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _get_token(stack, alice, key)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    # A disable written straight into the database, with no replica to pass it on...
    engine = peek(stack.database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text("UPDATE agents SET enabled = false WHERE agent_id = :agent"),
                {"agent": AGENT},
            )
    finally:
        engine.dispose()
    # ...is honoured on the first call once a replica answers there again.
    stack.policies[1] = await _start_policy(
        stack.env | {"NEXUS_POLICY_LISTEN": f"127.0.0.1:{port}"}
    )
    async with asyncio.timeout(10):
        while True:
            try:
                await _get_token(stack, alice, key)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    await asyncio.sleep(0.05)
                    continue
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
                break
            raise AssertionError("a disabled agent was served from a cache")


async def _until(condition: Any, seconds: float) -> float:
    """Seconds until ``condition()`` holds; fails past ``seconds``."""
    started = time.monotonic()
    async with asyncio.timeout(seconds):
        while True:
            if condition():
                return time.monotonic() - started
            await asyncio.sleep(0.01)


async def test_a_feed_whose_connection_goes_silent_is_a_gap_and_heals(stack: Stack) -> None:
    """A gateway follows a policy replica through a TCP proxy that then stops
    forwarding without a word, as a NAT that forgot the connection: within three
    heartbeats its caches are off, and once a keepalive ping has gone unanswered
    the dead connection is replaced and the feed is heard again."""
    from nexus_gateway.server import create_gateway
    from nexus_gateway.settings import GatewaySettings

    heartbeat = {"NEXUS_LISTENER_HEARTBEAT_SECONDS": "0.2"}
    policy = await _start_policy(stack.env | heartbeat | {"NEXUS_POLICY_LISTEN": "127.0.0.1:0"})
    with TcpProxy("127.0.0.1", policy.server.port) as proxy:
        env = stack.env | heartbeat
        env |= {
            "NEXUS_POLICY_TARGET": f"127.0.0.1:{proxy.port}",
            "NEXUS_GATEWAY_LISTEN": "127.0.0.1:0",
            "NEXUS_GATEWAY_HTTP_LISTEN": "127.0.0.1:0",
        }
        gateway = create_gateway(GatewaySettings.from_env(env))
        try:
            await gateway.start_caches(wait_seconds=5)
            # Healthy, its keepalive pings are admitted: the feed stays up.
            with pytest.raises(TimeoutError):
                await _until(lambda: not gateway.feed.ready, 2.0)
            proxy.stall()
            assert await _until(lambda: not gateway.feed.ready, BOUND_SECONDS) > 0.3
            await _until(lambda: gateway.feed.ready, 15)
            assert proxy.accepted >= 2
        finally:
            await gateway.close()
            await policy.server.stop(0)
            await policy.close()


async def test_a_denial_is_asked_again_each_time_so_each_is_audited(
    stack: Stack, oidc: OidcServer, app: AppServer
) -> None:
    await register_crm(stack.services, oidc)
    alice = await connect_crm(stack.services, app, "alice")
    key = await _agent(stack)
    await _update(stack, agents_pb2.Agent(agent_id=AGENT, bindings=_bindings("bob")), "bindings")
    await _refused_within_bound(stack, alice, key)
    before = _policy_calls()["AuthorizeAccess"]
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _get_token(stack, alice, key)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # not its workspace
    assert _policy_calls()["AuthorizeAccess"] == before + 3
