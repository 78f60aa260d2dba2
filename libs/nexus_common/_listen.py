"""Hearing other replicas' writes: PostgreSQL ``LISTEN``, on one connection per process.

Writers ``NOTIFY`` in the same transaction as the write (a trigger does it), so a
notice is delivered exactly when the write becomes visible. The listener turns
each notice into a call of ``on_notice(channel, payload)``.

While it is not listening (before the first ``LISTEN``, after the connection is
lost) notices go unheard, so ``on_gap()`` is called at once and ``on_ready()``
only when ``LISTEN`` holds again: the caches it feeds stop caching in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

__all__ = ["ChangeListener", "listens"]

log = logging.getLogger("nexus.listen")

_RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)
_CONNECT_TIMEOUT_SECONDS = 5


def listens(database_url: str) -> bool:
    """Whether the database can carry change notices (PostgreSQL can, SQLite cannot;
    an embedded SQLite deployment is one process, whose own writes invalidate)."""
    return make_url(database_url).get_backend_name() in {"postgresql", "postgres"}


def _conninfo(database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class ChangeListener:
    def __init__(
        self,
        database_url: str,
        channels: Sequence[str],
        on_notice: Callable[[str, str], None],
        *,
        on_gap: Callable[[], None],
        on_ready: Callable[[], None],
    ) -> None:
        self._conninfo = _conninfo(database_url)
        self._channels = tuple(channels)
        self._on_notice = on_notice
        self._on_gap = on_gap
        self._on_ready = on_ready
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    async def start(self, *, wait_seconds: float = 5.0) -> None:
        """Start listening; wait a little for the first ``LISTEN`` so a fresh
        replica caches from its first request, but serve uncached if it cannot."""
        self._on_gap()
        self._task = asyncio.create_task(self._run(), name="change-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), wait_seconds)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._listen()
            except (psycopg.Error, OSError) as exc:
                # Only the kind: the error text may carry the connection string.
                log.warning(
                    "change notices lost (%s); caches off until heard again",
                    type(exc).__name__,
                )
            finally:
                if self._listening.is_set():
                    self._listening.clear()
                    self._on_gap()
                    failures = 0
            await asyncio.sleep(_RETRY_SECONDS[min(failures, len(_RETRY_SECONDS) - 1)])
            failures += 1

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_SECONDS
        ) as connection:
            for channel in self._channels:
                await connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self._listening.set()
            self._on_ready()
            async for notice in connection.notifies():
                self._on_notice(notice.channel, notice.payload)
