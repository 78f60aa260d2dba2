"""Hearing other replicas' writes: PostgreSQL ``LISTEN``, on one connection per process.

Writers ``NOTIFY`` in the same transaction as the write (a trigger does it), so a
notice is delivered exactly when the write becomes visible. The listener turns
each notice into a call of ``on_notice(channel, payload)``.

While it is not listening (before the first heartbeat, after the connection
is lost) notices go unheard, so ``on_gap()`` is called at once and
``on_ready()`` only when it hears again: the caches it feeds stop caching in
between.

A connection can also die without a word: a half-open TCP connection, a NAT
that forgot it, a proxy that failed over. Its socket stays open and quiet, as
it would with no writes to hear. So the listener sends itself a heartbeat, a
``NOTIFY`` on a channel of its own through that same connection, every
``heartbeat_seconds``. One not back within that interval is a gap at once, and
the listener connects again (giving up on the old connection in the
background). Notices arrive in commit order, so a heartbeat heard back means
every notice committed before it was heard too; a connection that dies stops
the caching within twice the interval. A connection's first heartbeat heard,
not its ``LISTEN``, is what turns caching on.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Callable, Sequence

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from sqlalchemy.engine import make_url

from ._follow import Follower

__all__ = ["ChangeListener", "listens"]

_CONNECT_TIMEOUT_SECONDS = 5
# What the kernel does about a peer gone without a word (libpq's parameters of
# these names). The heartbeat notices first; these end what it cannot: a send
# or a connect that would otherwise wait forever on a dead path, and the
# socket itself. Keep-alive probes (RFC 9293 §3.8.4) after 10 s idle, every
# 5 s, 3 unanswered drop the connection; data unacknowledged for 10 s does
# too (the user timeout, RFC 9293 §3.8.3's R2). A URL that sets one wins.
_TCP_OPTIONS = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
}
# How an operator tells the listeners apart in pg_stat_activity.
APPLICATION_NAME = "nexus change listener"


def listens(database_url: str) -> bool:
    """Whether the database can carry change notices (PostgreSQL can, SQLite cannot;
    an embedded SQLite deployment is one process, whose own writes invalidate)."""
    return make_url(database_url).get_backend_name() in {"postgresql", "postgres"}


def _conninfo(database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql")
    params = conninfo_to_dict(url.render_as_string(hide_password=False))
    return make_conninfo("", **{**_TCP_OPTIONS, "application_name": APPLICATION_NAME, **params})


class _HeartbeatMissed(Exception):
    """The connection did not carry this listener's own notice back in time."""


class ChangeListener(Follower):
    def __init__(
        self,
        database_url: str,
        channels: Sequence[str],
        on_notice: Callable[[str, str], None],
        *,
        on_gap: Callable[[], None],
        on_ready: Callable[[], None],
        heartbeat_seconds: float,
    ) -> None:
        super().__init__(
            "the database's change notices", on_notice, on_gap=on_gap, on_ready=on_ready
        )
        self._conninfo = _conninfo(database_url)
        self._channels = tuple(channels)
        self._heartbeat = heartbeat_seconds
        # Its own, so that no other replica hears (or is woken by) its heartbeats.
        self._beat_channel = f"nexus_heartbeat_{uuid.uuid4().hex}"
        self._statement: asyncio.Future[object] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def listening(self) -> bool:
        return self.ready

    async def start(self, *, wait_seconds: float = 5.0) -> None:
        """Start listening; wait a little for the first heartbeat so a fresh
        replica caches from its first request, but serve uncached if it cannot."""
        await super().start(wait_seconds=wait_seconds)

    async def close(self) -> None:
        await super().close()
        # The connections given up on finish closing: a dead one within ~10 s.
        await asyncio.gather(*self._retiring)

    async def _session(self) -> None:
        connection = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_SECONDS
        )
        self._statement = None
        try:
            # Bounded: on a path that swallows what is sent, nothing else ends it.
            async with asyncio.timeout(_CONNECT_TIMEOUT_SECONDS):
                for channel in (*self._channels, self._beat_channel):
                    await self._execute(
                        connection, sql.SQL("LISTEN {}").format(sql.Identifier(channel))
                    )
            while True:
                await self._beat(connection)
        finally:
            self._retire(connection)

    async def _beat(self, connection: psycopg.AsyncConnection[TupleRow]) -> None:
        """One heartbeat: send it, pass notices on until the interval ends, and
        raise if it was not heard back by then."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self._heartbeat
        beat = secrets.token_hex(8)
        heard = False
        try:
            async with asyncio.timeout_at(due):
                await self._execute(
                    connection,
                    sql.SQL("NOTIFY {}, {}").format(
                        sql.Identifier(self._beat_channel), sql.Literal(beat)
                    ),
                )
        except TimeoutError as exc:
            raise _HeartbeatMissed from exc
        async for notice in connection.notifies(timeout=max(0.0, due - loop.time())):
            if notice.channel != self._beat_channel:
                self._on_notice(notice.channel, notice.payload)
            elif notice.payload == beat and not heard:
                heard = True
                if not self.ready:
                    self._heard()
        if not heard:
            raise _HeartbeatMissed

    async def _execute(
        self, connection: psycopg.AsyncConnection[TupleRow], query: sql.Composed
    ) -> None:
        # Shielded: psycopg gives up on a statement by cancelling it on the
        # server and waiting up to 10 s for that, on a dead connection in vain.
        # A statement not waited for any more is given up on in the background
        # (see _retire), so that the gap is called and the next connection
        # made at once.
        statement: asyncio.Future[object] = asyncio.ensure_future(connection.execute(query))
        self._statement = statement
        await asyncio.shield(statement)

    def _retire(self, connection: psycopg.AsyncConnection[TupleRow]) -> None:
        statement = self._statement

        async def retire() -> None:
            if statement is not None and not statement.done():
                statement.cancel()
            if statement is not None:
                await asyncio.gather(statement, return_exceptions=True)
            await connection.close()

        task = asyncio.ensure_future(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
