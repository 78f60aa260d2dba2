"""Agents as the access decision reads them, kept in memory for the hot path.

Every GetToken that is not already answered from the broker's cache asks the
policy service, so reading the agent from the database each time would put a
round trip on every decision. What keeps the cache right is invalidation
(see ``nexus_common._cache``):

- this replica's own writes drop the agent before their answer goes out;
- another replica's writes arrive as ``NOTIFY nexus_agents`` (a trigger sends
  it at commit, PostgreSQL only) and drop it as soon as they are heard;
- while the notices cannot be heard, nothing is cached.

Every change that drops an agent here is also passed on to whoever watches
this replica's changes (the gateway and the broker keep caches of their own).
"""

from __future__ import annotations

from collections.abc import Callable

from nexus_common import LoadingCache

from ..adapters.repository import PolicyUnitOfWork
from ..domain.agents import Agent

__all__ = ["AgentCache"]


class AgentCache:
    def __init__(
        self,
        uow: Callable[[], PolicyUnitOfWork],
        max_age_seconds: float,
        *,
        hears_others: bool,
        changed: Callable[[str], None] = lambda agent_id: None,
        max_entries: int = 10_000,
    ) -> None:
        self._uow = uow
        # A replica that shares its database with others caches nothing until
        # its listener says it hears their changes.
        self._cache = LoadingCache[str, Agent | None](
            max_age_seconds, max_entries=max_entries, enabled=not hears_others
        )
        self._changed = changed

    async def get(self, agent_id: str) -> Agent | None:
        return await self._cache.get(agent_id, lambda: self._read(agent_id))

    async def _read(self, agent_id: str) -> Agent | None:
        async with self._uow() as uow:
            return await uow.agents.get(agent_id)

    def invalidate(self, agent_id: str) -> None:
        """The agent changed (here, after the commit, or anywhere, once heard)."""
        self._cache.invalidate(agent_id)
        self._changed(agent_id)

    def suspend(self) -> None:
        self._cache.suspend()

    def resume(self) -> None:
        self._cache.resume()
