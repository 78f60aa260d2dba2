"""The broker's cache of its own rows, and what keeps it right.

GetToken needs a connection, its sealed credentials and its provider. Those
are cached here, in two ``LoadingCache``\\ s: connections by id (tag
``connection:<id>``) and providers by id (tag ``provider:<id>``). Providers
are cached apart from connections because a provider is shared by many
connections (one copy, one entry dropped when it changes) and because an
entry's tags must be known before its load starts, while a connection's
provider is only known once its row is read.

Three things drop entries:

- a unit of work that wrote a row drops it right after its commit (see
  ``Writes``), before the use case answers;
- another replica's write arrives as a PostgreSQL notice on ``nexus_broker``
  (sent by triggers, migration 0007) and drops it when heard;
- while notices cannot be heard (before the first ``LISTEN``, after the
  listener's connection is lost, or once its heartbeat goes unheard, as on a
  connection that died without a word), nothing is cached: every read goes
  to the database. ``max_age_seconds`` bounds each entry as a backstop.

On SQLite there are no notices: one process serves, and its own writes suffice.
The credentials stay sealed in the cache (opened per release, about 13 µs), so
a cached entry that is printed, dumped or swapped out holds no usable token.
"""

from __future__ import annotations

import asyncio

from nexus_common import ChangeListener, LoadingCache, listens

from ..domain.providers import Provider
from .connection_repository import SealedConnection
from .writes import CHANNEL, CONNECTION, PROVIDER, Writes

__all__ = ["RowCache"]

_MAX_NAMES = 10_000


class RowCache:
    def __init__(
        self, database_url: str, max_age_seconds: float, *, heartbeat_seconds: float
    ) -> None:
        self.connections = LoadingCache[str, SealedConnection](max_age_seconds)
        self.providers = LoadingCache[str, Provider](max_age_seconds)
        # Provider names to ids, for sessions, which name their provider. An
        # id never changes meaning, so a stale name is caught by checking the
        # provider read by id still carries it.
        self.provider_ids: dict[str, str] = {}
        self._listener: ChangeListener | None = None
        if listens(database_url) and self.enabled:
            self._listener = ChangeListener(
                database_url,
                [CHANNEL],
                self._heard,
                on_gap=self.suspend,
                on_ready=self.resume,
                heartbeat_seconds=heartbeat_seconds,
            )
            # Nothing is cached until LISTEN holds: until then another
            # replica's write could go unheard.
            self.suspend()
        self._starting: asyncio.Future[None] | None = None

    @property
    def enabled(self) -> bool:
        """Whether entries are kept now (configured on, and notices heard)."""
        return self.connections.enabled

    @property
    def listening(self) -> bool:
        return self._listener is not None and self._listener.listening

    async def start(self, *, wait_seconds: float = 5.0) -> None:
        """Listen for other replicas' writes; caching starts once ``LISTEN``
        holds. Idempotent. A broker calls it as it starts serving; a core used
        without that (a tool, a test's second replica) starts on its first read."""
        if self._listener is None or self._starting is not None:
            return
        self._starting = asyncio.ensure_future(self._listener.start(wait_seconds=wait_seconds))
        await self._starting

    def ensure_started(self) -> None:
        if self._listener is not None and self._starting is None:
            self._starting = asyncio.ensure_future(self._listener.start(wait_seconds=0))

    async def close(self) -> None:
        if self._starting is not None:
            # First, so a start not yet run cannot begin listening after the close.
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
            self._starting = None
        if self._listener is not None:
            await self._listener.close()

    def remember_name(self, name: str, provider_id: str) -> None:
        if not self.enabled:
            return
        if len(self.provider_ids) >= _MAX_NAMES:
            self.provider_ids.clear()
        self.provider_ids[name] = provider_id

    def invalidate(self, *tags: str) -> None:
        connection_tags = [t for t in tags if t.startswith(CONNECTION)]
        provider_tags = [t for t in tags if t.startswith(PROVIDER)]
        if len(connection_tags) + len(provider_tags) < len(tags):
            # A notice this version does not understand: something changed.
            self.clear()
            return
        if connection_tags:
            self.connections.invalidate(*connection_tags)
        if provider_tags:
            self.providers.invalidate(*provider_tags)

    def publish(self, writes: Writes) -> None:
        """Drop what a committed unit of work wrote."""
        if writes.everything:
            self.clear()
        elif writes.tags:
            self.invalidate(*writes.tags)

    def clear(self) -> None:
        self.connections.clear()
        self.providers.clear()

    def suspend(self) -> None:
        self.connections.suspend()
        self.providers.suspend()

    def resume(self) -> None:
        self.connections.resume()
        self.providers.resume()

    def _heard(self, channel: str, payload: str) -> None:
        self.invalidate(payload)
