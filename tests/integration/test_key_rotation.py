"""Rotating the keyring while connections refresh, on PostgreSQL, against a
real provider on loopback that rotates refresh tokens and refuses a spent one
(RFC 9700 §4.14.2), as the certified ``oidc-provider``, Auth0 and Okta do.

The rollout of README's "Rotating the keyring": key 2 joins every replica's
keyring while key 1 still seals (``NEXUS_KEYRING_PRIMARY=1``); replicas
restart with key 2 promoted; then ``python -m nexus_broker reseal`` runs. The
broker behind the gateway is a replica not yet restarted (key 1 seals); the
``promoted`` one has restarted (key 2 seals)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa
from nexus_broker.domain.connections import Connection, ConnectionStatus, Lease, TokenSet
from nexus_broker.server import BrokerCore, create_core
from nexus_broker.service_layer.tokens import release_token
from nexus_broker.settings import BrokerSettings
from nexus_common import Keyring, generate_key_spec

from tests.conftest import Services
from tests.integration.helpers import peek, rotating
from tests.integration.test_connections import force_refresh, register
from tests.support.postgres import fresh_database, postgres_url
from tests.support.rotating_provider import RotatingProvider

KEY_1, KEY_2 = generate_key_spec(1), generate_key_spec(2)
CONNECTIONS = 200
HOUR = timedelta(hours=1)
# Refreshes in flight at once: enough to race, few enough for a shared machine.
IN_FLIGHT = 16


@pytest.fixture
def database_url() -> Iterator[str]:
    """PostgreSQL only: replicas share a server, and rows lock."""
    url, drop = fresh_database(postgres_url())
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def keyring_spec() -> str:
    return f"{KEY_1},{KEY_2}"


@pytest.fixture
def service_overrides() -> dict[str, str]:
    return {"NEXUS_KEYRING_PRIMARY": "1"}


@pytest.fixture
def provider() -> Iterator[RotatingProvider]:
    with RotatingProvider() as server:
        yield server


@contextlib.asynccontextmanager
async def replica(services: Services, **settings: str) -> AsyncIterator[BrokerCore]:
    """Another broker against the same database: its own engine, client and keyring."""
    core = create_core(BrokerSettings.from_env({**services.env, **settings}))
    try:
        yield core
    finally:
        await core.close()


async def seed(services: Services, provider: RotatingProvider, count: int) -> list[str]:
    """``count`` active connections holding live tokens of the provider, in
    key order (as stored, and as a re-seal reads them); every other one, from
    the second, is due for the refresh loop."""
    registered = await register(
        services,
        rotating(provider),
    )
    now = datetime.now(UTC)
    ids = sorted(str(uuid.uuid4()) for _ in range(count))
    async with services.broker.core.deps.uow() as uow:
        for index, connection_id in enumerate(ids):
            connection = Connection(
                id=connection_id,
                workspace_id="user_sarah",
                provider_id=registered.id,
                scopes=("contacts:read",),
                return_url="http://127.0.0.1/done",
                status=ConnectionStatus.ACTIVE,
                created_at=now,
                updated_at=now,
                token_expires_at=now + HOUR,
                next_refresh_at=now - HOUR if index % 2 else now + HOUR,
            )
            issued = provider.issue()
            tokens = TokenSet(
                str(issued["access_token"]),
                refresh_token=str(issued["refresh_token"]),
                expires_at=now + HOUR,
            )
            await uow.connections.add(connection)
            assert await uow.connections.save(connection, read_at=now, tokens=tokens)
        await uow.commit()
    return ids


async def start_reseal(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nexus_broker",
        "reseal",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_until_blocked(engine: sa.Engine, process: asyncio.subprocess.Process) -> None:
    """Until the re-seal waits for a row lock on ``connections``: it has read
    the rows it is about to rewrite, and the test holds the first of them."""
    for _ in range(1200):
        with engine.connect() as db:
            waiting = db.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    " AND query LIKE 'UPDATE connections%'"
                )
            )
        if waiting:
            return
        assert process.returncode is None, "the re-seal ended before it reached the held row"
        await asyncio.sleep(0.05)
    raise AssertionError("the re-seal never reached the held row")


async def refresh_while_resealing(services: Services, promoted: BrokerCore, ids: list[str]) -> None:
    """Refresh every connection but the first: the due ones by the promoted
    replica's loop, the others forced through the gateway's replica."""
    limit = asyncio.Semaphore(IN_FLIGHT)
    leases = await promoted.refresher.claim_due(batch=len(ids))
    assert sorted(lease.connection_id for lease in leases) == ids[1::2]

    async def forced(connection_id: str) -> None:
        async with limit:
            refreshed = await force_refresh(services, connection_id)
        assert refreshed.status == "active" and refreshed.last_error == ""

    async def looped(lease: Lease) -> None:
        async with limit:
            await promoted.refresher.refresh_claimed(lease)

    await asyncio.gather(*map(forced, ids[2::2]), *map(looped, leases))


async def lost_refresh_tokens(services: Services, ids: list[str]) -> list[str]:
    """Force a refresh of every connection; those the provider refused."""
    limit = asyncio.Semaphore(IN_FLIGHT)
    lost: list[str] = []

    async def refresh(connection_id: str) -> None:
        async with limit:
            try:
                await force_refresh(services, connection_id)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
                lost.append(connection_id)

    await asyncio.gather(*map(refresh, ids))
    return lost


async def test_a_reseal_racing_refreshes_never_restores_a_spent_refresh_token(
    services: Services, provider: RotatingProvider
) -> None:
    ids = await seed(services, provider, CONNECTIONS)
    promoted_env = {**services.env, "NEXUS_KEYRING_PRIMARY": "2"}
    engine = peek(services.env["NEXUS_BROKER_DATABASE_URL"])
    try:
        # Holding the first row stops the re-seal once it has read its rows and
        # before it writes any: the refreshes below commit in between.
        with engine.connect() as holder:
            holder.execute(
                sa.text("SELECT id FROM connections WHERE id = :id FOR UPDATE"), {"id": ids[0]}
            )
            reseal = await start_reseal(promoted_env)
            await wait_until_blocked(engine, reseal)
            async with replica(services, NEXUS_KEYRING_PRIMARY="2") as promoted:
                await refresh_while_resealing(services, promoted, ids)
            holder.rollback()
        stdout, stderr = await asyncio.wait_for(reseal.communicate(), timeout=120)
        assert reseal.returncode == 0, stderr.decode()
        assert "secrets under key version 2" in stdout.decode()

        # Key 1 may leave the keyring now: key 2 alone opens every credential.
        only_new = Keyring.from_spec(KEY_2)
        with engine.connect() as db:
            rows = db.execute(sa.text("SELECT id, credentials_sealed FROM connections")).all()
        for connection_id, sealed in rows:
            only_new.open(bytes(sealed), f"connections/{connection_id}/credentials".encode())
    finally:
        engine.dispose()

    # Every connection still refreshes, and no refresh token went twice.
    assert await lost_refresh_tokens(services, ids) == []
    assert set(provider.uses.values()) == {1}
    assert sum(provider.uses.values()) == 2 * CONNECTIONS - 1


async def test_a_key_distributed_before_its_promotion_seals_nothing(
    services: Services, provider: RotatingProvider
) -> None:
    (connection_id,) = await seed(services, provider, 1)
    # The gateway's replica has key 2 already, and refreshes while key 1 seals.
    await force_refresh(services, connection_id)
    # A replica the rollout has not reached, with key 1 only, serves what it stored.
    async with replica(services, NEXUS_KEYRING=KEY_1, NEXUS_KEYRING_PRIMARY="") as old:
        _, credentials, _ = await release_token(connection_id, old.connections, old.refresher)
    assert credentials["access_token"] == provider.issued[-1][0]
