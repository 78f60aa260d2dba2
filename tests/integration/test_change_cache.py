"""The hot path's caches: invalidation by tag, loads racing a write, and change
notices heard from a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
from nexus_common import ChangeListener, LoadingCache


class Source:
    """Stands for a database row, read through the cache."""

    def __init__(self) -> None:
        self.value = "v1"
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def read(self) -> str:
        self.reads += 1
        value = self.value
        if self.gate is not None:
            await self.gate.wait()
        return value


async def test_a_warm_read_does_not_reach_the_source() -> None:
    source, cache = Source(), LoadingCache[str, str](60)
    assert [await cache.get("c1", source.read) for _ in range(5)] == ["v1"] * 5
    assert source.reads == 1


async def test_invalidating_a_tag_drops_every_entry_carrying_it() -> None:
    source, cache = Source(), LoadingCache[str, str](60)
    await cache.get("c1:agent-a", source.read, tags=("c1", "agent-a"))
    await cache.get("c2:agent-a", source.read, tags=("c2", "agent-a"))
    await cache.get("c2:agent-b", source.read, tags=("c2", "agent-b"))
    cache.invalidate("agent-a")
    assert len(cache) == 1
    source.value = "v2"
    assert await cache.get("c1:agent-a", source.read, tags=("c1", "agent-a")) == "v2"
    assert await cache.get("c2:agent-b", source.read, tags=("c2", "agent-b")) == "v1"


async def test_a_load_that_raced_a_write_is_not_stored() -> None:
    source, cache = Source(), LoadingCache[str, str](60)
    source.gate = asyncio.Event()
    stale = asyncio.create_task(cache.get("c1", source.read))
    await asyncio.sleep(0)
    # The write lands while the read holds the old value.
    source.value = "v2"
    cache.invalidate("c1")
    source.gate.set()
    assert await stale == "v1"
    assert await cache.get("c1", source.read) == "v2"


async def test_entries_expire_and_are_bounded() -> None:
    now = [0.0]
    source = Source()
    cache = LoadingCache[str, str](1.0, max_entries=2, clock=lambda: now[0])
    await cache.get("c1", source.read)
    now[0] = 1.0
    source.value = "v2"
    assert await cache.get("c1", source.read) == "v2"
    for key in ("c2", "c3", "c4"):
        await cache.get(key, source.read)
    reads = source.reads
    # The two stored last stay; the oldest made room for them.
    assert len(cache) == 2
    await cache.get("c4", source.read)
    await cache.get("c3", source.read)
    assert source.reads == reads


async def test_a_suspended_cache_reads_through_until_resumed() -> None:
    source, cache = Source(), LoadingCache[str, str](60)
    await cache.get("c1", source.read)
    cache.suspend()
    source.value = "v2"
    assert await cache.get("c1", source.read) == "v2"
    assert await cache.get("c1", source.read) == "v2"
    assert source.reads == 3
    cache.resume()
    await cache.get("c1", source.read)
    await cache.get("c1", source.read)
    assert source.reads == 4


async def _notify(url: str, channel: str, payload: str) -> None:
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as connection:
        await connection.execute("SELECT pg_notify(%s, %s)", (channel, payload))


async def _until(predicate: Callable[[], bool], changed: asyncio.Event) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            changed.clear()
            await changed.wait()


async def test_the_listener_hears_notices_and_reports_a_lost_connection(pg_url: str) -> None:
    heard: list[tuple[str, str]] = []
    events: list[str] = []
    changed = asyncio.Event()

    def noting(record: Callable[[], None]) -> Callable[[], None]:
        def note() -> None:
            record()
            changed.set()

        return note

    listener = ChangeListener(
        pg_url,
        ["nexus_test"],
        lambda channel, payload: noting(lambda: heard.append((channel, payload)))(),
        on_gap=noting(lambda: events.append("gap")),
        on_ready=noting(lambda: events.append("ready")),
    )
    await listener.start()
    try:
        assert listener.listening and events == ["gap", "ready"]
        await _notify(pg_url, "nexus_test", "connection:c1")
        await _until(lambda: heard == [("nexus_test", "connection:c1")], changed)
        # Another session ends the listener's backend, as a database restart would.
        conninfo = pg_url.replace("postgresql+psycopg://", "postgresql://")
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%%' AND pid <> pg_backend_pid()"
            )
        await _until(lambda: events[-2:] == ["gap", "ready"] and len(events) == 4, changed)
        await _notify(pg_url, "nexus_test", "connection:c2")
        await _until(lambda: ("nexus_test", "connection:c2") in heard, changed)
    finally:
        await listener.close()
