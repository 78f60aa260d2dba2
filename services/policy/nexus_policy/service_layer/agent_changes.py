"""The agents that change, passed on to the services that watch this replica.

The gateway caches which agent holds a key, the broker the access decisions it
was given; neither hears the policy database. Each watches one policy replica
instead, which sends it every agent id it hears of: its own writes, and the
database's notices. A watch starts only while the replica hears those notices
(or needs none: SQLite is one process), and ends with
``ChangeFeedUnavailable`` the moment it stops hearing them, so a watcher never
believes it is told everything when it is not.

Each watcher's backlog is bounded; a watcher that falls that far behind is
ended the same way, rather than let its backlog grow without limit.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from nexus_common import ChangeFeedUnavailable

__all__ = ["AgentChanges"]

_NOT_LISTENING = "this policy replica cannot hear agent changes now; watch another, or again"


class _Watcher:
    def __init__(self, limit: int) -> None:
        self.pending: deque[str] = deque()
        self.wake = asyncio.Event()
        self.ended: str | None = None
        self._limit = limit

    def push(self, agent_id: str) -> None:
        if len(self.pending) >= self._limit:
            self.end("this watcher fell too far behind the agent changes")
        else:
            self.pending.append(agent_id)
            self.wake.set()

    def end(self, why: str) -> None:
        self.ended = why
        self.wake.set()


class AgentChanges:
    def __init__(
        self, *, listening: bool, heartbeat_seconds: float, max_backlog: int = 10_000
    ) -> None:
        self._listening = listening
        self._heartbeat = heartbeat_seconds
        self._max_backlog = max_backlog
        self._watchers: set[_Watcher] = set()

    @property
    def listening(self) -> bool:
        return self._listening

    def changed(self, agent_id: str) -> None:
        for watcher in self._watchers:
            watcher.push(agent_id)

    def heard(self) -> None:
        """The replica hears every change again: watches may start."""
        self._listening = True

    def lost(self) -> None:
        """Changes may go unheard: every watch ends, and none starts until heard."""
        self._listening = False
        for watcher in self._watchers:
            watcher.end(_NOT_LISTENING)

    async def watch(self) -> AsyncIterator[str | None]:
        """``None`` first (listening), then each changed agent id; ``None``
        again as a heartbeat while nothing changes."""
        if not self._listening:
            raise ChangeFeedUnavailable(_NOT_LISTENING)
        watcher = _Watcher(self._max_backlog)
        self._watchers.add(watcher)
        try:
            yield None
            while True:
                if watcher.ended is not None:
                    raise ChangeFeedUnavailable(watcher.ended)
                if watcher.pending:
                    yield watcher.pending.popleft()
                    continue
                watcher.wake.clear()
                try:
                    async with asyncio.timeout(self._heartbeat):
                        await watcher.wake.wait()
                except TimeoutError:
                    yield None
        finally:
            self._watchers.discard(watcher)
