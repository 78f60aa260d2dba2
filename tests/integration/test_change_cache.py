"""The hot path's caches: invalidation by tag, loads racing a write, and change
notices heard from a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import psycopg
from nexus_common import ChangeListener, LoadingCache
from psycopg.conninfo import conninfo_to_dict

from tests.support.tcp_proxy import TcpProxy


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


class Heard:
    """What a listener reported: its notices, and its gaps and readies in order."""

    def __init__(self) -> None:
        self.notices: list[tuple[str, str]] = []
        self.events: list[str] = []
        self.changed = asyncio.Event()

    def listener(self, url: str, *, heartbeat_seconds: float = 2.0) -> ChangeListener:
        return ChangeListener(
            url,
            ["nexus_test"],
            lambda channel, payload: self._note(self.notices, (channel, payload)),
            on_gap=lambda: self._note(self.events, "gap"),
            on_ready=lambda: self._note(self.events, "ready"),
            heartbeat_seconds=heartbeat_seconds,
        )

    def _note(self, into: list[object], what: object) -> None:
        into.append(what)
        self.changed.set()


async def test_the_listener_hears_notices_and_reports_a_lost_connection(pg_url: str) -> None:
    seen = Heard()
    heard, events, changed = seen.notices, seen.events, seen.changed
    listener = seen.listener(pg_url)
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
                "WHERE application_name = 'nexus change listener' AND datname = current_database()"
            )
        await _until(lambda: events[-2:] == ["gap", "ready"] and len(events) == 4, changed)
        await _notify(pg_url, "nexus_test", "connection:c2")
        await _until(lambda: ("nexus_test", "connection:c2") in heard, changed)
    finally:
        await listener.close()


async def test_a_listener_whose_connection_goes_silent_reports_a_gap_and_listens_again(
    pg_url: str,
) -> None:
    """The proxy stops forwarding the listener's connection without closing it:
    no error reaches the listener, its socket just stays quiet, as when a NAT
    forgets it. Only its heartbeat going unheard tells it; a notice sent
    meanwhile is lost, which the gap says, and it connects again."""
    upstream = urlsplit(pg_url)
    with TcpProxy(upstream.hostname or "127.0.0.1", upstream.port or 5432) as proxy:
        credentials = upstream.netloc.rpartition("@")[0]
        via = urlunsplit(upstream._replace(netloc=f"{credentials}@127.0.0.1:{proxy.port}"))
        seen = Heard()
        listener = seen.listener(via, heartbeat_seconds=0.2)
        await listener.start()
        try:
            assert listener.listening and seen.events == ["gap", "ready"]
            proxy.stall()
            await _notify(pg_url, "nexus_test", "connection:unheard")
            await _until(lambda: seen.events == ["gap", "ready", "gap"], seen.changed)
            await _until(lambda: seen.events == ["gap", "ready", "gap", "ready"], seen.changed)
            await _notify(pg_url, "nexus_test", "connection:c1")
            await _until(lambda: ("nexus_test", "connection:c1") in seen.notices, seen.changed)
            # Its heartbeats are its own: none is passed on as a notice.
            assert seen.notices == [("nexus_test", "connection:c1")]
        finally:
            await listener.close()


def test_the_listeners_connection_finds_a_dead_peer_unless_its_url_says_otherwise() -> None:
    from nexus_common._listen import _conninfo

    options = conninfo_to_dict(_conninfo("postgresql+psycopg://nexus@db:5432/nexus"))
    assert options["keepalives"] == "1" and options["tcp_user_timeout"] == "10000"
    assert options["application_name"] == "nexus change listener"
    assert (options["host"], options["dbname"]) == ("db", "nexus")
    chosen = conninfo_to_dict(
        _conninfo("postgresql://nexus@db/nexus?keepalives_idle=30&application_name=mine")
    )
    assert (chosen["keepalives_idle"], chosen["application_name"]) == ("30", "mine")
