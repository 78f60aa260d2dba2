"""A key the policy service does not know is refused by the gateway without
asking again: a client hammering one wrong key (or guessing) costs the policy
service one lookup per key and NEXUS_UNKNOWN_KEY_CACHE_SECONDS, not one per
request. An agent change heard on the policy's feed forgets the refusals,
since the change may be the key that was just made. Lookups are counted by
the policy service's own metrics (grpc_server_handled_total)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from nexus.broker.v1 import connections_pb2
from nexus_policy.domain.agents import issue_key
from prometheus_client import generate_latest

from tests.conftest import Services
from tests.integration.helpers import expect_error
from tests.integration.test_connections import connections
from tests.integration.test_sessions import bearer, register_agent
from tests.support.metrics import sample_sum

HAMMERED = 50


def lookups() -> float:
    """AuthenticateAgent calls the policy service answered so far (in this process)."""
    exposition = generate_latest().decode()
    return sample_sum(exposition, "grpc_server_handled_total", grpc_method="AuthenticateAgent")


async def refused(services: Services, key: str) -> None:
    await expect_error(
        connections(services).GetToken(
            connections_pb2.GetTokenRequest(connection_id="c1"), metadata=bearer(key)
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )


async def test_an_unknown_agent_key_hammered_is_looked_up_once(services: Services) -> None:
    unknown = issue_key().key  # shaped like a key, never registered
    before = lookups()
    for _ in range(HAMMERED):
        await refused(services, unknown)
    assert lookups() - before == 1
    await asyncio.gather(*(refused(services, unknown) for _ in range(HAMMERED)))
    assert lookups() - before == 1

    # Another key is its own lookup, even when its first calls arrive all at once.
    other = issue_key().key
    await asyncio.gather(*(refused(services, other) for _ in range(HAMMERED)))
    assert lookups() - before == 2


async def test_an_agent_change_forgets_the_refusals(services: Services) -> None:
    unknown = issue_key().key
    await refused(services, unknown)
    counted = lookups()
    await refused(services, unknown)
    assert lookups() == counted

    # A new agent (and key) reaches the gateway on the policy's feed; until
    # it is heard, the refusal may still be served from memory.
    key = await register_agent(services, "ops-agent", ["acme:gliding"])
    async with asyncio.timeout(10):
        while lookups() == counted:
            await refused(services, unknown)
            await asyncio.sleep(0.01)
    assert lookups() == counted + 1
    # The new key was never refused: it is known at once (there is no such connection).
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await connections(services).GetToken(
            connections_pb2.GetTokenRequest(connection_id="c1"), metadata=bearer(key)
        )
    assert caught.value.code() != grpc.StatusCode.UNAUTHENTICATED, caught.value.details()
