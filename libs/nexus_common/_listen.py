"""Hearing other replicas' writes: PostgreSQL ``LISTEN``, on one connection per process.

Writers ``NOTIFY`` in the same transaction as the write (a trigger does it), so a
notice is delivered exactly when the write becomes visible. The listener turns
each notice into a call of ``on_notice(channel, payload)``.

While it is not listening (before the first ``LISTEN``, after the connection is
lost) notices go unheard, so ``on_gap()`` is called at once and ``on_ready()``
only when ``LISTEN`` holds again: the caches it feeds stop caching in between.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from ._follow import Follower

__all__ = ["ChangeListener", "listens"]

_CONNECT_TIMEOUT_SECONDS = 5


def listens(database_url: str) -> bool:
    """Whether the database can carry change notices (PostgreSQL can, SQLite cannot;
    an embedded SQLite deployment is one process, whose own writes invalidate)."""
    return make_url(database_url).get_backend_name() in {"postgresql", "postgres"}


def _conninfo(database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class ChangeListener(Follower):
    def __init__(
        self,
        database_url: str,
        channels: Sequence[str],
        on_notice: Callable[[str, str], None],
        *,
        on_gap: Callable[[], None],
        on_ready: Callable[[], None],
    ) -> None:
        super().__init__(
            "the database's change notices", on_notice, on_gap=on_gap, on_ready=on_ready
        )
        self._conninfo = _conninfo(database_url)
        self._channels = tuple(channels)

    @property
    def listening(self) -> bool:
        return self.ready

    async def start(self, *, wait_seconds: float = 5.0) -> None:
        """Start listening; wait a little for the first ``LISTEN`` so a fresh
        replica caches from its first request, but serve uncached if it cannot."""
        await super().start(wait_seconds=wait_seconds)

    async def _session(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_SECONDS
        ) as connection:
            for channel in self._channels:
                await connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self._heard()
            async for notice in connection.notifies():
                self._on_notice(notice.channel, notice.payload)
