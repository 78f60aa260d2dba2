"""How services reach each other when a service runs as several replicas:
calls are spread over every address, and servers age connections out so
clients look up replicas again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from nexus_common import ApiKeySet, InternalClient, build_server, internal_authenticator

from tests.conftest import INTERNAL_TOKEN


class CountingHealth(health.aio.HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        self.checks += 1
        return await super().Check(request, context)


@pytest.fixture
async def replicas() -> AsyncIterator[list[tuple[int, CountingHealth]]]:
    started = []
    for _ in range(3):
        server = grpc.aio.server()
        servicer = CountingHealth()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        started.append((server, port, servicer))
    yield [(port, servicer) for _, port, servicer in started]
    for server, _, _ in started:
        await server.stop(0)


async def test_calls_take_turns_over_every_replica_the_target_resolves_to(
    replicas: list[tuple[int, CountingHealth]],
) -> None:
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port, _ in replicas)
    client = InternalClient("policy", target, INTERNAL_TOKEN)
    try:
        stub = health_pb2_grpc.HealthStub(client.channel)
        # Until every connection is up, calls go to those that are; a busy
        # machine may take a while to connect them all.
        for _ in range(300):
            await client.call(stub.Check, health_pb2.HealthCheckRequest())
            if all(servicer.checks for _, servicer in replicas):
                break
        checks = [servicer.checks for _, servicer in replicas]
        assert all(checks), f"a replica got no calls: {checks}"
        # Once all are up, they take turns.
        for _ in range(30):
            await client.call(stub.Check, health_pb2.HealthCheckRequest())
        assert [servicer.checks for _, servicer in replicas] == [n + 10 for n in checks]
    finally:
        await client.close()


async def test_an_aged_connection_is_replaced_without_failing_a_call() -> None:
    server = build_server(
        address="127.0.0.1:0",
        registrars=[],
        service_names=[],
        authenticate=internal_authenticator(ApiKeySet.from_spec(f"test:{INTERNAL_TOKEN}")),
        max_connection_age=0.3,
    )
    await server.start()
    client = InternalClient("broker", f"127.0.0.1:{server.port}", INTERNAL_TOKEN)
    try:
        stub = health_pb2_grpc.HealthStub(client.channel)
        await client.call(stub.Check, health_pb2.HealthCheckRequest())
        assert client.channel.get_state() is grpc.ChannelConnectivity.READY
        # The server sends GOAWAY once the connection is old enough; the
        # channel then goes idle and the next call connects afresh.
        await asyncio.wait_for(
            client.channel.wait_for_state_change(grpc.ChannelConnectivity.READY), 10
        )
        for _ in range(20):
            response = await client.call(stub.Check, health_pb2.HealthCheckRequest())
            assert response.status == health_pb2.HealthCheckResponse.SERVING
            await asyncio.sleep(0.05)
    finally:
        await client.close()
        await server.server.stop(0)
