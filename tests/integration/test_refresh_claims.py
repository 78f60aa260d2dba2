"""The refresh loop's storage on SQLite and PostgreSQL: due connections claimed
in one statement, and outcomes stored together, each only under its own fence."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from nexus_broker.domain.connections import Connection, ConnectionStatus, TokenSet
from nexus_broker.server import BrokerCore, create_core, migrate_database
from nexus_broker.service_layer.connections import connection_event
from nexus_broker.service_layer.outcomes import Outcome, outcome_writer
from nexus_broker.service_layer.providers import create_provider
from nexus_broker.settings import BrokerSettings

from tests.conftest import service_env
from tests.integration.helpers import peek
from tests.samples import SALESFORCE_SPEC

HOUR = timedelta(hours=1)


async def _add(core: BrokerCore, provider_id: str, next_refresh_at: datetime) -> Connection:
    now = datetime.now(UTC)
    connection = Connection(
        id=str(uuid.uuid4()),
        workspace_id="w",
        provider_id=provider_id,
        scopes=("read",),
        return_url="http://127.0.0.1/done",
        status=ConnectionStatus.ACTIVE,
        created_at=now,
        updated_at=now,
        token_expires_at=now + HOUR,
        next_refresh_at=next_refresh_at,
    )
    tokens = TokenSet("at-old", refresh_token="rt-old", expires_at=now + HOUR)
    async with core.deps.uow() as uow:
        await uow.connections.add(connection)
        assert await uow.connections.save(connection, read_at=now, tokens=tokens)
        await uow.commit()
    return connection


async def test_due_connections_are_claimed_at_once_and_outcomes_stored_only_under_their_fence(
    database_url: str, keyring_spec: str
) -> None:
    migrate_database(database_url)
    core = create_core(BrokerSettings.from_env(service_env(database_url, keyring_spec)))
    engine = peek(database_url)
    try:
        provider = await create_provider(SALESFORCE_SPEC, core.deps)
        past = datetime.now(UTC) - timedelta(minutes=1)
        due = {(await _add(core, provider.id, past)).id for _ in range(3)}
        later = await _add(core, provider.id, datetime.now(UTC) + HOUR)

        leases = core.connections.leases
        async with core.deps.uow() as uow:
            claimed = await leases.claim_due(uow, 10)
            await uow.commit()
        assert {lease.connection_id for lease, _, _ in claimed} == due
        assert later.id not in {connection.id for _, connection, _ in claimed}
        assert all(_refresh_token(tokens()) == "rt-old" for _, _, tokens in claimed)
        # Held now: a second pass (this broker or another) claims none of them.
        async with core.deps.uow() as uow:
            assert await leases.claim_due(uow, 10) == []
            await uow.commit()

        # Another broker took over the first lease (it had lapsed meanwhile).
        (taken, _, _), *kept = claimed
        with engine.begin() as db:
            db.execute(
                sa.text("UPDATE connections SET lease_owner = 'other' WHERE id = :id"),
                {"id": taken.connection_id},
            )
        now = datetime.now(UTC)
        fresh = TokenSet("at-new", refresh_token="rt-new", expires_at=now + HOUR)
        outcomes = []
        for lease, connection, _ in claimed:
            stored = replace(connection, last_refreshed_at=now, updated_at=now)
            event = connection_event("refresh.succeeded", stored, now)
            outcomes.append(Outcome(lease, stored, fresh, event))
        writer = outcome_writer(core.deps.uow)
        # Written together: one transaction, each row under its own fence.
        stored = await asyncio.gather(*(writer.record(outcome) for outcome in outcomes))
        await writer.close()
        assert stored == [False, True, True]

        with engine.connect() as db:
            rows = {
                row.id: row
                for row in db.execute(sa.text("SELECT id, lease_owner FROM connections"))
            }
            audited = db.scalars(
                sa.text("SELECT resource FROM audit_events WHERE action = 'refresh.succeeded'")
            ).all()
        assert rows[taken.connection_id].lease_owner == "other"
        assert all(rows[lease.connection_id].lease_owner is None for lease, _, _ in kept)
        assert sorted(audited) == sorted(
            f"connections/{lease.connection_id}" for lease, _, _ in kept
        )
        async with core.deps.uow() as uow:
            assert _refresh_token(await uow.connections.tokens(taken.connection_id)) == "rt-old"
            for lease, _, _ in kept:
                assert await uow.connections.tokens(lease.connection_id) == fresh
    finally:
        engine.dispose()
        await core.close()


def _refresh_token(tokens: TokenSet | None) -> str | None:
    assert tokens is not None
    return tokens.refresh_token
