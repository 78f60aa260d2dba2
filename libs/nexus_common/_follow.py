"""Keeping one source of change notices followed, reconnecting when it is lost.

``ChangeListener`` (PostgreSQL ``LISTEN``) and ``ChangeFeed`` (another
service's stream) share one contract: ``on_notice(channel, payload)`` per
change, ``on_gap()`` as soon as changes could go unheard, ``on_ready()`` once
every change is heard again, so the caches they feed are off in between. What
differs is only how a session connects and reads; this runs the sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence

__all__ = ["Follower"]

log = logging.getLogger("nexus.follow")

RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)


class Follower:
    """Runs ``_session()`` again and again: it connects, calls ``_heard()`` once
    every change reaches it, passes notices on, and returns or raises when it
    stops hearing them."""

    def __init__(
        self,
        name: str,
        on_notice: Callable[[str, str], None],
        *,
        on_gap: Callable[[], None],
        on_ready: Callable[[], None],
        retry_seconds: Sequence[float] = RETRY_SECONDS,
    ) -> None:
        self._name = name
        self._on_notice = on_notice
        self._on_gap = on_gap
        self._on_ready = on_ready
        self._retry = tuple(retry_seconds)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        # Whether the running session heard every change at some point: a
        # session that did ends a run of failures, even when it ended silent.
        self._session_heard = False

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def start(self, *, wait_seconds: float) -> None:
        """Start following; wait up to ``wait_seconds`` for every change to be
        heard, serving uncached meanwhile if it is not yet. Idempotent."""
        if self._task is not None:
            return
        self._on_gap()
        self._task = asyncio.create_task(self._run(), name=f"follow-{self._name}")
        if wait_seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait_seconds)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _session(self) -> None:
        raise NotImplementedError

    def _heard(self) -> None:
        self._session_heard = True
        self._ready.set()
        self._on_ready()

    def _lost(self) -> None:
        """Changes may be going unheard from now on: caches off at once, even
        while the session is still being torn down. Idempotent."""
        if self._ready.is_set():
            self._ready.clear()
            self._on_gap()

    async def _run(self) -> None:
        failures = 0
        while True:
            self._session_heard = False
            try:
                await self._session()
                log.warning("%s ended; caches off until it is back", self._name)
            except Exception as exc:
                # Only the kind: the text may carry a connection string or a peer's words.
                log.warning(
                    "%s was lost (%s); caches off until it is back",
                    self._name,
                    type(exc).__name__,
                )
            finally:
                if self._session_heard:
                    failures = 0
                self._lost()
            delay = self._retry[min(failures, len(self._retry) - 1)]
            # Jitter, so the replicas of a service do not all reconnect at once.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - not a secret
            failures += 1
