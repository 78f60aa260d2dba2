"""In-memory caches for the hot path, dropped by the writes that make them wrong.

A cache here holds what a replica read from its source of truth (its database,
or another service) so that a warm request needs no round trip. What keeps it
right is invalidation, not expiry:

- a write in this process drops the entries it touched before its answer goes out;
- a write anywhere else arrives as a change notice (PostgreSQL ``NOTIFY``, or the
  policy service's change feed) and drops them as soon as it is read;
- while the notices cannot be heard (start-up, a lost listener), nothing is cached
  and every read goes to the source.

``max_age_seconds`` still bounds every entry, as a backstop for a notice lost in
a way nobody foresaw; it is not what keeps a revoke or a disable fast.

Each entry carries tags (a connection id, an agent id): invalidating a tag drops
every entry carrying it, and a load that began before the invalidation does not
store what it read, since it may have read the state the write replaced.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["LoadingCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class _Entry(Generic[V]):
    stored_at: float
    value: V
    tags: tuple[Hashable, ...]


class LoadingCache(Generic[K, V]):
    """``await cache.get(key, load, tags=...)``: the cached value, or ``load()``'s,
    stored when no invalidation of its tags happened while it loaded."""

    def __init__(
        self,
        max_age_seconds: float,
        *,
        max_entries: int = 100_000,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_age = max_age_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._enabled = enabled and max_age_seconds > 0
        self._configured = max_age_seconds > 0
        self._entries: dict[K, _Entry[V]] = {}
        self._by_tag: dict[Hashable, set[K]] = {}
        # Bumped per tag by each invalidation; the epoch by each clear. A load
        # stores its value only if neither moved while it ran.
        self._generations: dict[Hashable, int] = {}
        self._epoch = 0

    @property
    def enabled(self) -> bool:
        return self._enabled

    def __len__(self) -> int:
        return len(self._entries)

    async def get(
        self, key: K, load: Callable[[], Awaitable[V]], *, tags: Iterable[Hashable] = ()
    ) -> V:
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry.stored_at < self._max_age:
            return entry.value
        tags = tuple(tags) or (key,)
        epoch = self._epoch
        generations = [self._generations.get(tag, 0) for tag in tags]
        stored_at = self._clock()
        value = await load()
        if (
            self._enabled
            and epoch == self._epoch
            and generations == [self._generations.get(tag, 0) for tag in tags]
        ):
            self._store(key, _Entry(stored_at, value, tags))
        return value

    def _store(self, key: K, entry: _Entry[V]) -> None:
        self._discard(key)
        if len(self._entries) >= self._max_entries:
            # The oldest stored goes first (dicts keep insertion order), so a
            # working set just over the bound costs a miss per eviction, not
            # the whole cache each time it fills.
            self._discard(next(iter(self._entries)))
        self._entries[key] = entry
        for tag in entry.tags:
            self._by_tag.setdefault(tag, set()).add(key)

    def _discard(self, key: K) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for tag in entry.tags:
            keys = self._by_tag.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_tag[tag]

    def invalidate(self, *tags: Hashable) -> None:
        """Drop every entry carrying one of ``tags`` (an untagged entry is tagged by its key)."""
        if len(self._generations) + len(tags) > 4 * self._max_entries:
            # Generations only need to outlive the loads in flight; starting
            # over, with a new epoch, keeps them bounded.
            self._drop_all()
            return
        for tag in tags:
            self._generations[tag] = self._generations.get(tag, 0) + 1
            for key in list(self._by_tag.get(tag, ())):
                self._discard(key)

    def _drop_all(self) -> None:
        self._entries.clear()
        self._by_tag.clear()
        self._generations.clear()
        self._epoch += 1

    def clear(self) -> None:
        self._drop_all()

    def suspend(self) -> None:
        """Stop caching: the change notices cannot be heard, so no entry could be trusted."""
        self._enabled = False
        self._drop_all()

    def resume(self) -> None:
        """Notices are heard again: cache what is read from now on."""
        self._drop_all()
        self._enabled = self._configured
