"""The broker's storage on SQLite and PostgreSQL: migrations, optimistic
concurrency and key rotation, through the repositories and the CLI."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from nexus_broker.server import create_core, migrate_database
from nexus_broker.service_layer.providers import create_provider
from nexus_broker.settings import BrokerSettings
from nexus_common import Keyring, generate_key_spec, sync_url

from tests.conftest import service_env
from tests.samples import SALESFORCE_SPEC


def _sealed_secret(database_url: str) -> bytes:
    engine = sa.create_engine(sync_url(database_url))
    with engine.connect() as connection:
        sealed = connection.scalar(sa.text("SELECT client_secret_sealed FROM providers"))
    engine.dispose()
    return bytes(sealed)


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
    assert "re-sealed 1 secrets" in stdout.decode()
    aad = f"providers/{provider.id}/client_secret".encode()
    # The old key can now be dropped: the new key alone opens the secret.
    assert Keyring.from_spec(new_key).open(_sealed_secret(database_url), aad) == b"SF_CLIENT_SECRET"
