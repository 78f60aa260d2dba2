"""The published JWK Set is served from memory, and stays right across rotation.

Statements are counted with a SQLAlchemy event listener on the broker's own
engine, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from nexus.broker.v1 import sessions_pb2
from nexus_broker.domain.signing import new_signing_key
from nexus_broker.server import create_core, migrate_database
from nexus_broker.service_layer.signing import SessionSigner
from nexus_broker.settings import BrokerSettings
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Services, service_env
from tests.integration.test_sessions import sessions

HOUR = timedelta(hours=1)
CACHE = timedelta(seconds=60)


@contextmanager
def signing_key_reads(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every statement on the signing-key table while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "signing_keys" in statement:
            seen.append(statement)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", record)


def _kids(document: dict[str, Any]) -> set[str]:
    return {key["kid"] for key in document["keys"]}


async def test_repeated_jwks_calls_are_answered_from_memory_with_cache_control(
    services: Services,
) -> None:
    async def get() -> tuple[dict[str, Any], str]:
        call = sessions(services).GetJwks(sessions_pb2.GetJwksRequest())
        body = await call
        headers = dict(await call.initial_metadata())
        return json.loads(body.data), str(headers["cache-control"])

    first, _ = await get()
    assert first["keys"]
    with signing_key_reads(services.broker.core.engine) as reads:
        answers = [await get() for _ in range(50)]
    assert reads == []
    assert all(document == first for document, _ in answers)
    for _, cache_control in answers:
        match = re.fullmatch(r"public, max-age=(\d+)", cache_control)
        assert match is not None, cache_control
        assert 0 < int(match[1]) <= 60


async def test_rotation_shows_at_once_and_a_racing_replicas_key_within_the_cache_bound(
    database_url: str, keyring_spec: str
) -> None:
    migrate_database(database_url)
    core = create_core(BrokerSettings.from_env(service_env(database_url, keyring_spec)))
    signer = SessionSigner(
        core.deps.uow, rotation=HOUR, longest_session=timedelta(minutes=10), jwks_cache=CACHE
    )
    start = datetime.now(UTC)
    try:
        first = await signer.current(start)
        published = await signer.jwks(start)
        assert _kids(published.document) == {first.kid}
        assert published.max_age_seconds(start) == 60
        with signing_key_reads(core.engine) as reads:
            for second in range(59):
                assert await signer.jwks(start + timedelta(seconds=second)) is published
        assert reads == []

        # Another replica, racing this one for the same period, made a key too.
        async with core.deps.uow() as uow:
            raced = new_signing_key(start, HOUR, timedelta(minutes=10))
            await uow.signing_keys.add(raced)
            await uow.commit()
        assert raced.kid not in _kids((await signer.jwks(start + timedelta(seconds=30))).document)
        assert raced.kid in _kids((await signer.jwks(start + CACHE)).document)

        # Near the current key's retirement, no cache may keep the set past it.
        near_end = start + HOUR - timedelta(seconds=10)
        assert (await signer.jwks(near_end)).max_age_seconds(near_end) == 10
        after = start + HOUR + timedelta(seconds=1)
        rotated = await signer.jwks(after)
        new_key = await signer.current(after)
        assert new_key.kid not in {first.kid, raced.kid}
        assert new_key.kid in _kids(rotated.document)
    finally:
        await core.close()
