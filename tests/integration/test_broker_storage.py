"""The broker's storage on SQLite and PostgreSQL: migrations, optimistic
concurrency and key rotation, through the repositories and the CLI."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from nexus_broker.adapters.grant_rows import GrantRows
from nexus_broker.domain.sessions import Session, SessionKind
from nexus_broker.server import create_core, migrate_database
from nexus_broker.service_layer.providers import create_provider
from nexus_broker.service_layer.sessions import purge_sessions
from nexus_broker.service_layer.signing import SessionSigner
from nexus_broker.settings import BrokerSettings
from nexus_common import Keyring, generate_key_spec

from tests.conftest import service_env
from tests.integration.helpers import peek
from tests.samples import SALESFORCE_SPEC

HOUR = timedelta(hours=1)


def _sealed(database_url: str, query: str) -> tuple[str, bytes]:
    engine = peek(database_url)
    with engine.connect() as connection:
        row_id, sealed = connection.execute(sa.text(query)).one()
    engine.dispose()
    return row_id, bytes(sealed)


async def test_migrations_are_idempotent_and_a_stale_write_is_refused(
    database_url: str, keyring_spec: str
) -> None:
    migrate_database(database_url)
    migrate_database(database_url)
    core = create_core(BrokerSettings.from_env(service_env(database_url, keyring_spec)))
    try:
        provider = await create_provider(SALESFORCE_SPEC, core.deps)
        async with core.deps.uow() as uow:
            stale_read = provider.updated_at - timedelta(seconds=1)
            changed = replace(provider, updated_at=datetime.now(UTC))
            assert not await uow.providers.update(changed, None, read_at=stale_read)
            assert await uow.providers.update(changed, None, read_at=provider.updated_at)
            await uow.commit()
        async with core.deps.uow() as uow:
            stored = await uow.providers.get(provider.id)
            assert stored is not None and stored.updated_at == changed.updated_at
            assert await uow.providers.client_secret(provider.id) == "SF_CLIENT_SECRET"
    finally:
        await core.close()


async def test_reseal_moves_secrets_to_the_newest_key(database_url: str) -> None:
    old_key = generate_key_spec(1)
    migrate_database(database_url)
    core = create_core(BrokerSettings.from_env(service_env(database_url, old_key)))
    try:
        provider = await create_provider(SALESFORCE_SPEC, core.deps)
        # The first session-signing key is made on first use.
        signing_key = await core.sessions.signer.current(datetime.now(UTC))
    finally:
        await core.close()
    new_key = generate_key_spec(2)
    env = {**os.environ, **service_env(database_url, f"{old_key},{new_key}")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nexus_broker",
        "reseal",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert "re-sealed 2 secrets" in stdout.decode()
    # The old key can now be dropped: the new key alone opens every secret.
    only_new = Keyring.from_spec(new_key)
    _, secret = _sealed(database_url, "SELECT id, client_secret_sealed FROM providers")
    aad = f"providers/{provider.id}/client_secret".encode()
    assert only_new.open(secret, aad) == b"SF_CLIENT_SECRET"
    kid, private_key = _sealed(database_url, "SELECT kid, private_key_sealed FROM signing_keys")
    assert kid == signing_key.kid
    assert only_new.open(private_key, f"signing_keys/{kid}".encode())


async def test_signing_keys_rotate_and_stay_published_while_their_tokens_live(
    database_url: str, keyring_spec: str
) -> None:
    migrate_database(database_url)
    core = create_core(BrokerSettings.from_env(service_env(database_url, keyring_spec)))
    # Signing periods of an hour, sessions of at most ten minutes.
    signer = SessionSigner(
        core.deps.uow, rotation=timedelta(hours=1), longest_session=timedelta(minutes=10)
    )
    start = datetime.now(UTC)
    try:
        first = await signer.current(start)
        assert (await signer.current(start + timedelta(minutes=59))).kid == first.kid
        # Another replica reads the same key from the database.
        replica = SessionSigner(
            core.deps.uow, rotation=timedelta(hours=1), longest_session=timedelta(minutes=10)
        )
        assert (await replica.current(start + timedelta(minutes=30))).kid == first.kid

        later = start + timedelta(hours=1, seconds=1)
        second = await signer.current(later)
        assert second.kid != first.kid
        published = {key["kid"] for key in (await signer.jwks(later)).document["keys"]}
        assert published == {first.kid, second.kid}
        # Once every token the first key signed has expired, it is withdrawn.
        gone = start + timedelta(hours=1, minutes=12)
        assert {key["kid"] for key in (await signer.jwks(gone)).document["keys"]} == {second.kid}
    finally:
        await core.close()


async def test_long_ended_sessions_are_purged_and_live_ones_kept(
    database_url: str, keyring_spec: str
) -> None:
    migrate_database(database_url)
    core = create_core(BrokerSettings.from_env(service_env(database_url, keyring_spec)))
    now = datetime.now(UTC)

    def session(ended_ago: timedelta) -> Session:
        return Session(
            kind=SessionKind.AGENT,
            agent_id="ops-agent",
            provider_id="p",
            provider_name="internal-ops",
            connection_id=None,
            scopes=("acme:gliding",),
            created_at=now - ended_ago - timedelta(minutes=15),
            expires_at=now - ended_ago,
        )

    old, recent, live = session(timedelta(days=8)), session(timedelta(days=1)), session(-HOUR)
    try:
        await GrantRows(core.engine).insert([old, recent, live], [])
        assert await purge_sessions(core.sessions, timedelta(days=7)) == 1
        async with core.deps.uow() as uow:
            assert await uow.sessions.get(old.id) is None
            assert await uow.sessions.get(recent.id) is not None
            assert await uow.sessions.get(live.id) is not None
    finally:
        await core.close()


def test_sqlite_files_leave_migration_in_write_ahead_logging(tmp_path: Path) -> None:
    # Readers and writers of the embedded default must not block each other,
    # and no service connection may have to race the others to switch modes.
    url = f"sqlite:///{tmp_path / 'nexus.db'}"
    migrate_database(url)
    engine = peek(url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()
