"""Agents as the access decision reads them, kept in memory for the hot path.

Every GetToken asks the policy service, so reading the agent from the
database each time would put a round trip on every credential release. This
replica's own writes drop the entry at once. Another replica's writes are seen
within ``max_age_seconds``: each entry is read again once that old. The kill
switch does not wait for that: the broker is told directly, and the change is
in the database the moment the admin's call returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..adapters.repository import PolicyUnitOfWork
from ..domain.agents import Agent

__all__ = ["AgentCache"]


class AgentCache:
    def __init__(
        self,
        uow: Callable[[], PolicyUnitOfWork],
        max_age_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
    ) -> None:
        self._uow = uow
        self._max_age = max_age_seconds
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, Agent | None]] = {}
        # Bumped by each invalidation, so a read that began before a write
        # cannot store what it read after the write dropped the entry.
        self._generations: dict[str, int] = {}

    async def get(self, agent_id: str) -> Agent | None:
        entry = self._entries.get(agent_id)
        if entry is not None and self._clock() - entry[0] < self._max_age:
            return entry[1]
        generation = self._generations.get(agent_id, 0)
        read_at = self._clock()
        async with self._uow() as uow:
            agent = await uow.agents.get(agent_id)
        if self._generations.get(agent_id, 0) == generation and self._max_age > 0:
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[agent_id] = (read_at, agent)
        return agent

    def invalidate(self, agent_id: str) -> None:
        self._entries.pop(agent_id, None)
        self._generations[agent_id] = self._generations.get(agent_id, 0) + 1
