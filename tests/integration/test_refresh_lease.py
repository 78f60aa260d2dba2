"""The refresh lease across brokers, on PostgreSQL, against a real provider on
loopback that rotates refresh tokens and counts every use of each one.

Broker A is the one behind the gateway; broker B is a second broker core with
its own engine, HTTP client and leases, against the same database, as a second
replica would be. The lease is 2 s here, so a provider that stalls 5 s
answers well past it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from google.protobuf import json_format
from nexus.broker.v1 import audit_pb2, connections_pb2
from nexus.gateway.v1 import gateway_pb2_grpc
from nexus_broker.server import BrokerCore, create_core
from nexus_broker.service_layer.tokens import release_token
from nexus_broker.settings import BrokerSettings
from nexus_common import generate_key_spec

from tests.conftest import Services
from tests.integration.helpers import ADMIN, peek, rotating
from tests.integration.test_connections import (
    browse,
    check,
    connections,
    register,
    run_refresh_loop_once,
    start,
    token,
)
from tests.support.app_server import AppServer
from tests.support.postgres import fresh_database, postgres_url
from tests.support.rotating_provider import RotatingProvider

# Renewed every 0.5 s, so a test survives an event loop stalled for a second on a busy machine.
LEASE_SECONDS = 2
STALL_SECONDS = 5
# The total deadline of one provider call (NEXUS_PROVIDER_TIMEOUT_SECONDS) where a test sets it.
DEADLINE_SECONDS = 3


@pytest.fixture
def database_url() -> Iterator[str]:
    """PostgreSQL only: the lease is about replicas, which share a server."""
    url, drop = fresh_database(postgres_url())
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def service_overrides() -> dict[str, str]:
    return {"NEXUS_REFRESH_LEASE_SECONDS": str(LEASE_SECONDS)}


@pytest.fixture
def provider() -> Iterator[RotatingProvider]:
    with RotatingProvider() as server:
        yield server


@contextlib.asynccontextmanager
async def replica(services: Services, **settings: str) -> AsyncIterator[BrokerCore]:
    """Another broker against the same database: its own engine, client and leases."""
    core = create_core(BrokerSettings.from_env({**services.env, **settings}))
    try:
        yield core
    finally:
        await core.close()


@pytest.fixture
async def broker_b(services: Services) -> AsyncIterator[BrokerCore]:
    async with replica(services) as core:
        yield core


async def connect(services: Services, app: AppServer, provider: RotatingProvider) -> str:
    """An active connection whose 2 s token is due at once for GetToken (within
    the expiry skew) and after 1 s for the refresh loop (its half-life)."""
    await register(
        services,
        rotating(provider),
    )
    provider.expires_in = 2
    started = await start(services, f"{app.url}/done", provider_name="rotating")
    landing = await browse(started.auth_url)
    assert parse_qs(urlsplit(str(landing.url)).query)["status"] == ["success"], landing.text
    provider.expires_in = 3600
    return started.connection_id


@contextlib.contextmanager
def database(services: Services) -> Iterator[sa.Engine]:
    engine = peek(services.env["NEXUS_BROKER_DATABASE_URL"])
    try:
        yield engine
    finally:
        engine.dispose()


def lease_row(services: Services, connection_id: str) -> dict[str, Any]:
    with database(services) as engine, engine.connect() as db:
        row = db.execute(
            sa.text(
                "SELECT lease_owner, lease_until, refresh_failures, next_refresh_at"
                " FROM connections WHERE id = :id"
            ),
            {"id": connection_id},
        ).one()
    return dict(row._mapping)


async def stored_tokens(core: BrokerCore, connection_id: str) -> tuple[str, str | None]:
    async with core.deps.uow() as uow:
        tokens = await uow.connections.tokens(connection_id)
    assert tokens is not None
    return tokens.access_token, tokens.refresh_token


async def audit_trail(services: Services, connection_id: str) -> list[audit_pb2.AuditEvent]:
    events = await gateway_pb2_grpc.AuditServiceStub(services.gateway).ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(resource=f"connections/{connection_id}"), metadata=ADMIN
    )
    return list(reversed(events.audit_events))


async def arrived(provider: RotatingProvider) -> None:
    assert await asyncio.to_thread(provider.refresh_arrived.wait, 10)


async def test_two_brokers_never_send_the_same_refresh_token_twice(
    services: Services, app: AppServer, provider: RotatingProvider, broker_b: BrokerCore
) -> None:
    connection_id = await connect(services, app, provider)
    first_refresh_token = provider.issued[-1][1]
    await asyncio.sleep(1.1)  # due for broker B's refresh loop too
    provider.stall_next_refresh = STALL_SECONDS
    # Broker A refreshes for a GetToken; the provider holds its answer past the lease.
    read_at_a = asyncio.create_task(token(services, connection_id))
    await arrived(provider)
    # Meanwhile broker B serves a GetToken and runs its refresh loop, again and again.
    read_at_b = asyncio.create_task(
        release_token(connection_id, broker_b.connections, broker_b.refresher)
    )
    loop = asyncio.get_running_loop()
    until = loop.time() + STALL_SECONDS + 1
    while loop.time() < until:
        for lease in await broker_b.refresher.claim_due(batch=50):
            await broker_b.refresher.refresh_claimed(lease)
        await asyncio.sleep(0.05)
    payload_a, (_, credentials_b, _) = await read_at_a, await read_at_b

    assert provider.uses == Counter({first_refresh_token: 1})
    newest_access, newest_refresh = provider.issued[-1]
    assert payload_a.credentials["access_token"] == newest_access
    assert credentials_b["access_token"] == newest_access
    assert await stored_tokens(broker_b, connection_id) == (newest_access, newest_refresh)
    status = await check(services, connection_id)
    assert status.status == "active" and status.last_error == ""
    row = lease_row(services, connection_id)
    assert row["lease_owner"] is None and row["lease_until"] is None
    assert Counter(e.action for e in await audit_trail(services, connection_id)) == {
        "connection.create": 1,
        "connection.activate": 1,
        "refresh.succeeded": 1,
        "token.release": 2,
    }


async def test_an_unexpected_failure_releases_the_lease_with_backoff_and_is_recorded(
    services: Services, app: AppServer, provider: RotatingProvider
) -> None:
    connection_id = await connect(services, app, provider)
    await asyncio.sleep(1.1)
    started = datetime.now(UTC)
    # A replica deployed without the key that sealed the tokens: its refresh
    # fails in a way nothing foresees.
    async with replica(services, NEXUS_KEYRING=generate_key_spec(1)) as stranger:
        leases = await stranger.refresher.claim_due(batch=50)
        assert [lease.connection_id for lease in leases] == [connection_id]
        await stranger.refresher.refresh_claimed(leases[0])
        # Backing off: the next pass, moments later, does not try again.
        assert await stranger.refresher.claim_due(batch=50) == []

    row = lease_row(services, connection_id)
    assert row["lease_owner"] is None and row["lease_until"] is None
    assert row["refresh_failures"] == 1 and row["next_refresh_at"] > started
    status = await check(services, connection_id)
    assert status.status == "active"
    assert status.last_error == "the refresh failed unexpectedly (KeyringError); retrying later"
    failed = (await audit_trail(services, connection_id))[-1]
    assert failed.action == "refresh.failed"
    assert json_format.MessageToDict(failed.details)["failures"] == 1
    assert provider.refresh_calls == 0

    # Once the (test-sized) backoff is over, a healthy broker refreshes as usual.
    await asyncio.sleep(0.6)
    await run_refresh_loop_once(services)
    status = await check(services, connection_id)
    assert status.status == "active" and status.last_error == ""
    assert provider.refresh_calls == 1


async def test_a_provider_that_drips_its_answer_is_cut_off_at_the_deadline(
    services: Services, app: AppServer, provider: RotatingProvider
) -> None:
    connection_id = await connect(services, app, provider)
    spent_refresh = provider.issued[-1][1]
    await asyncio.sleep(1.1)
    provider.drip_next_refresh = 3 * DEADLINE_SECONDS
    async with replica(services, NEXUS_PROVIDER_TIMEOUT_SECONDS=str(DEADLINE_SECONDS)) as broker:
        (lease,) = await broker.refresher.claim_due(batch=50)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await broker.refresher.refresh_claimed(lease)
        assert loop.time() - started < 2 * DEADLINE_SECONDS

    row = lease_row(services, connection_id)
    assert row["lease_owner"] is None and row["lease_until"] is None
    assert row["refresh_failures"] == 1
    status = await check(services, connection_id)
    assert status.status == "active" and "deadline" in status.last_error
    assert provider.uses == Counter({spent_refresh: 1})


async def test_revoke_waits_for_a_refresh_in_flight_and_revokes_what_it_minted(
    services: Services, app: AppServer, provider: RotatingProvider, broker_b: BrokerCore
) -> None:
    connection_id = await connect(services, app, provider)
    await asyncio.sleep(1.1)
    provider.stall_next_refresh = STALL_SECONDS
    (lease,) = await broker_b.refresher.claim_due(batch=50)
    refreshing = asyncio.create_task(broker_b.refresher.refresh_claimed(lease))
    await arrived(provider)
    revoked = await connections(services).RevokeConnection(
        connections_pb2.RevokeConnectionRequest(connection_id=connection_id), metadata=ADMIN
    )
    await refreshing

    assert len(provider.issued) == 2
    minted_access, minted_refresh = provider.issued[-1]
    # RFC 7009: the refresh token first, then its access token.
    assert provider.revoked == [minted_refresh, minted_access]
    assert revoked.status == "revoked" and revoked.last_error == ""
    trail = await audit_trail(services, connection_id)
    assert [e.action for e in trail] == [
        "connection.create",
        "connection.activate",
        "refresh.succeeded",
        "connection.revoke",
    ]
    assert json_format.MessageToDict(trail[-1].details)["at_provider"] is True
    row = lease_row(services, connection_id)
    assert row["lease_owner"] is None and row["lease_until"] is None


async def test_a_result_whose_lease_was_taken_over_is_discarded_and_its_tokens_revoked(
    services: Services, app: AppServer, provider: RotatingProvider
) -> None:
    connection_id = await connect(services, app, provider)
    spent_access, spent_refresh = provider.issued[-1]
    await asyncio.sleep(1.1)
    lapsed, taken_over = threading.Event(), threading.Event()

    def pause_past_the_lease() -> None:
        # The one fault the deadline cannot rule out: the holder is paused
        # (a stopped VM, a clock jump) until its lease lapses and another
        # broker claims it, and only then does the provider's answer arrive.
        with database(services) as engine, engine.begin() as db:
            db.execute(
                sa.text("UPDATE connections SET lease_until = :past WHERE id = :id"),
                {"past": datetime(2000, 1, 1, tzinfo=UTC), "id": connection_id},
            )
        lapsed.set()
        assert taken_over.wait(10)

    provider.before_refresh_answer = pause_past_the_lease
    # Broker B with a long lease: no renewal falls into the pause.
    async with replica(services, NEXUS_REFRESH_LEASE_SECONDS="30") as holder:
        (lease,) = await holder.refresher.claim_due(batch=50)
        refreshing = asyncio.create_task(holder.refresher.refresh_claimed(lease))
        assert await asyncio.to_thread(lapsed.wait, 10)
        async with replica(services) as successor:
            successor_lease = await successor.connections.leases.claim(connection_id)
            taken_over.set()
            await refreshing
            # The successor's lease and the stored tokens are untouched.
            assert lease_row(services, connection_id)["lease_owner"] == successor_lease.fence
            assert await stored_tokens(successor, connection_id) == (spent_access, spent_refresh)
            await successor.connections.leases.release(successor_lease)

    assert provider.uses == Counter({spent_refresh: 1})
    minted_access, minted_refresh = provider.issued[-1]
    assert provider.revoked == [minted_refresh, minted_access]
    discarded = (await audit_trail(services, connection_id))[-1]
    assert discarded.action == "refresh.discarded"
    details = json_format.MessageToDict(discarded.details)
    assert details["rotated"] is True and details["revoked_at_provider"] is True
