"""The change feed's contract, both ends, without a network: a watcher hears
every change after "ready" or learns that it cannot (a gap), never silence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from nexus_common import ChangeFeed, ChangeFeedUnavailable
from nexus_policy.service_layer.agent_changes import AgentChanges


class Peer:
    """Stands for the far end: each connect() gets the next script of messages;
    a script ending in ``...`` then stays silent."""

    def __init__(self, *scripts: list[object]) -> None:
        self.scripts = list(scripts)
        self.connects = 0

    async def connect(self) -> AsyncIterator[str | None]:
        self.connects += 1
        script = self.scripts.pop(0) if self.scripts else [...]
        for message in script:
            if message is ...:
                await asyncio.Event().wait()
            assert message is None or isinstance(message, str)
            yield message


def _feed(peer: Peer, events: list[str], idle_seconds: float = 15.0) -> ChangeFeed:
    return ChangeFeed(
        "test",
        "nexus_agents",
        peer.connect,
        lambda channel, payload: events.append(f"{channel}:{payload}"),
        on_gap=lambda: events.append("gap"),
        on_ready=lambda: events.append("ready"),
        retry_seconds=(0.01,),
        idle_seconds=idle_seconds,
    )


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(2):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


async def test_notices_are_heard_only_between_ready_and_the_next_gap() -> None:
    events: list[str] = []
    peer = Peer([None, "a1", None, "a2"], [None, ...])
    feed = _feed(peer, events)
    await feed.start(wait_seconds=1)
    try:
        await _until(lambda: peer.connects == 2 and feed.ready)
        # The first stream ended: a gap, then a new stream and ready again.
        assert events == [
            "gap",
            "ready",
            "nexus_agents:a1",
            "nexus_agents:a2",
            "gap",
            "ready",
        ]
    finally:
        await feed.close()
    assert events[-1] == "gap"


async def test_a_silent_peer_is_a_gap() -> None:
    events: list[str] = []
    feed = _feed(Peer([None, ...], [None, ...]), events, idle_seconds=0.05)
    await feed.start(wait_seconds=1)
    try:
        await _until(lambda: events.count("gap") >= 2)
    finally:
        await feed.close()


async def test_a_stream_that_does_not_start_ready_is_not_trusted() -> None:
    events: list[str] = []
    peer = Peer(["a1", ...], [None, ...])
    feed = _feed(peer, events)
    await feed.start(wait_seconds=1)
    try:
        assert events == ["gap", "ready"] and peer.connects == 2
    finally:
        await feed.close()


async def _next(watch: AsyncIterator[str | None]) -> str | None:
    async with asyncio.timeout(1):
        return await anext(watch)


async def test_a_replica_that_does_not_listen_refuses_and_ends_watches() -> None:
    changes = AgentChanges(listening=False, heartbeat_seconds=5)
    with pytest.raises(ChangeFeedUnavailable):
        await _next(changes.watch())
    changes.heard()
    watch = changes.watch()
    assert await _next(watch) is None
    changes.changed("crm-agent")
    assert await _next(watch) == "crm-agent"
    changes.lost()
    with pytest.raises(ChangeFeedUnavailable):
        await _next(watch)


async def test_a_watcher_too_far_behind_is_ended_not_buffered_without_limit() -> None:
    changes = AgentChanges(listening=True, heartbeat_seconds=5, max_backlog=2)
    watch = changes.watch()
    assert await _next(watch) is None
    for agent_id in ("a1", "a2", "a3"):
        changes.changed(agent_id)
    with pytest.raises(ChangeFeedUnavailable):
        await _next(watch)


async def test_a_quiet_watch_sends_heartbeats() -> None:
    changes = AgentChanges(listening=True, heartbeat_seconds=0.01)
    watch = changes.watch()
    assert [await _next(watch) for _ in range(3)] == [None, None, None]
