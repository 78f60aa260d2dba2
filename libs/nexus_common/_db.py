"""Engines, sessions, units of work and migrations for SQLite and PostgreSQL.

Services run on SQLAlchemy's asyncio engine: aiosqlite for the embedded
default and psycopg 3 for PostgreSQL. Alembic runs with the matching
synchronous driver, once at start-up.

Losing the database is a fault that passes: a unit of work turns it into
``DatabaseUnavailable`` (``UNAVAILABLE`` with a retry hint), which clients
retry, never an internal error. ``retry_stale`` runs an all-or-nothing unit of
work once more when the pool had handed out a connection the database had
already dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, overload

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Table, event, select, update
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from ._errors import DatabaseUnavailable
from ._keyring import Keyring

__all__ = [
    "BatchInsert",
    "Migrations",
    "ResealPage",
    "SqlUnitOfWork",
    "create_engine",
    "reseal_column",
    "retry_stale",
    "sync_url",
    "utc",
]

log = logging.getLogger("nexus.db")

T = TypeVar("T")
# Bounds how long a request waits on a database that does not answer a
# connection attempt (a dropped network, not a refused one).
_CONNECT_TIMEOUT_SECONDS = 5
# A pooled connection is replaced after half an hour, at its next checkout.
_RECYCLE_SECONDS = 1800
# Connections kept open, and how many more a burst may open (and close again):
# each service process holds at most 15, so several processes per service stay
# well inside PostgreSQL's default of 100.
_POOL_SIZE = 10
_POOL_OVERFLOW = 5
# psycopg prepares a statement on a connection once it has run this many times
# there, and then sends only its name and parameters. SQLAlchemy's compiled
# cache hands psycopg the same SQL text for each run of one statement, so the
# hot statements are parsed and planned once per connection; statements run
# once or twice (migrations, admin calls) are never prepared.
_PREPARE_THRESHOLD = 2


@overload
def utc(value: datetime) -> datetime: ...
@overload
def utc(value: None) -> None: ...
def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything Nexus stores is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _normalise(url: str, *, asynchronous: bool) -> str:
    parsed = make_url(url)
    # Heroku-style "postgres://" URLs are common in DATABASE_URL.
    backend = {"postgres": "postgresql"}.get(parsed.get_backend_name(), parsed.get_backend_name())
    if backend == "sqlite":
        driver = "aiosqlite" if asynchronous else "pysqlite"
    elif backend == "postgresql":
        driver = "psycopg"
    else:
        raise ValueError(f"unsupported database backend {backend!r}: use sqlite or postgresql")
    return parsed.set(drivername=f"{backend}+{driver}").render_as_string(hide_password=False)


def sync_url(url: str) -> str:
    return _normalise(url, asynchronous=False)


def create_engine(url: str) -> AsyncEngine:
    async_url = _normalise(url, asynchronous=True)
    if async_url.startswith("sqlite"):
        database = make_url(async_url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(async_url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # Parameters may be sealed secrets or tokens; keep them out of error messages.
    # No ping on checkout (a round trip before every transaction): a pooled
    # connection the server dropped fails its first statement instead, which
    # SQLAlchemy reports as a disconnect and answers by discarding every
    # connection pooled before it; the unit of work turns that into a stale
    # DatabaseUnavailable and ``retry_stale`` runs the use case once more, on
    # a fresh connection. Recycling bounds how long any connection lives, so
    # idle ones dropped by a firewall or proxy along the way are not kept.
    return create_async_engine(
        async_url,
        pool_recycle=_RECYCLE_SECONDS,
        pool_size=_POOL_SIZE,
        max_overflow=_POOL_OVERFLOW,
        hide_parameters=True,
        connect_args={
            "connect_timeout": _CONNECT_TIMEOUT_SECONDS,
            "prepare_threshold": _PREPARE_THRESHOLD,
        },
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed while a writer commits; foreign keys are off by default.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@dataclass(frozen=True)
class Migrations:
    """One service's Alembic scripts, the version table they record in, and the
    tables they make. Each service has its own version table, so services may
    share one database."""

    script_location: Path
    version_table: str
    tables: tuple[str, ...] = ()

    def _config(self) -> Config:
        config = Config()
        config.set_main_option("script_location", str(self.script_location))
        config.attributes["version_table"] = self.version_table
        return config

    def upgrade(self, url: str) -> None:
        config = self._config()
        config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
        command.upgrade(config, "head")
        if sync_url(url).startswith("sqlite"):
            _use_wal(sync_url(url))

    def is_current(self, url: str) -> bool:
        """Whether the database's schema is at head (what a replica waiting for
        the migration job asks)."""
        heads = set(ScriptDirectory.from_config(self._config()).get_heads())
        engine = sa_create_engine(sync_url(url), poolclass=NullPool)
        try:
            with engine.connect() as connection:
                context = MigrationContext.configure(
                    connection, opts={"version_table": self.version_table}
                )
                current = set(context.get_current_heads())
        except SQLAlchemyError as exc:
            # The URL may hold a password: name only the kind of failure.
            log.warning("cannot read the schema version: %s", type(exc).__name__)
            return False
        finally:
            engine.dispose()
        if current != heads:
            log.warning("schema is at %s, not at %s", sorted(current) or "nothing", sorted(heads))
        return current == heads

    def grant(self, url: str, role: str) -> None:
        """Give ``role``, the service's run-time PostgreSQL role, what it needs of
        this service's tables and no more: rows to read and write, and the
        schema version to read (``migrate --check``). It owns nothing, so it
        can alter or drop nothing, and it sees no other service's tables."""
        engine = sa_create_engine(sync_url(url), poolclass=NullPool)
        try:
            with engine.begin() as connection:
                quote = connection.dialect.identifier_preparer.quote
                grantee = quote(role)
                tables = ", ".join(quote(table) for table in self.tables)
                connection.exec_driver_sql(
                    f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {tables} TO {grantee}"
                )
                connection.exec_driver_sql(
                    f"GRANT SELECT ON TABLE {quote(self.version_table)} TO {grantee}"
                )
        finally:
            engine.dispose()

    def command(self, args: list[str], url: str, runtime_role: str = "") -> int:
        """``migrate`` upgrades, grants ``runtime_role`` (PostgreSQL) its rights
        on this service's tables, and exits 0; ``migrate --check`` exits 0 only
        when the schema is already at head."""
        if args == ["--check"]:
            return 0 if self.is_current(url) else 1
        if args:
            raise SystemExit("usage: migrate [--check]")
        self.upgrade(url)
        if runtime_role:
            if not sync_url(url).startswith("postgresql"):
                raise SystemExit("a run-time database role needs PostgreSQL")
            self.grant(url, runtime_role)
        return 0


def _use_wal(url: str) -> None:
    """Switch a SQLite file to write-ahead logging once, before any service
    connects. The mode is stored in the file; switching needs the database to
    itself, so leaving it to each service's first connection races their
    readers and writers, and a lost race silently keeps the rollback journal,
    where readers and writers block each other."""
    engine = sa_create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    finally:
        engine.dispose()


def _connectivity_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the database was out of reach, rather than that a
    statement was wrong: refused or dropped connections, a full pool, and
    the server's operational faults (restarts, deadlocks, cancelled queries)."""
    if isinstance(exc, PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and (
        exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    )


class SqlUnitOfWork:
    """``async with uow:`` opens a session that rolls back unless committed.
    Losing the database inside it raises ``DatabaseUnavailable``."""

    session: AsyncSession

    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._session_factory = session_factory
        self._committing = False

    async def __aenter__(self) -> Self:
        self.session = self._session_factory()
        self._committing = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lost = exc is not None and _connectivity_lost(exc)
        try:
            await self.session.rollback()
            await self.session.close()
        except SQLAlchemyError as cleanup:
            # The connection is gone with the database and the pool discards
            # it; nothing was left to undo, and the outcome stands.
            if not _connectivity_lost(cleanup):
                raise
        if lost:
            assert exc is not None
            raise _unavailable(exc, committing=self._committing) from exc

    async def commit(self) -> None:
        self._committing = True
        await self.session.commit()
        self._committing = False


def _unavailable(exc: BaseException, *, committing: bool) -> DatabaseUnavailable:
    """The error for database work that lost the database. A commit that
    failed may have happened: only an earlier failure is stale."""
    stale = isinstance(exc, DBAPIError) and exc.connection_invalidated and not committing
    log.warning("database unavailable: %s", type(getattr(exc, "orig", exc)).__name__)
    return DatabaseUnavailable("the database is unavailable; try again shortly", stale=stale)


Rows = Sequence[Mapping[str, Any]]


class BatchInsert:
    """Rows for one or more tables, inserted in one transaction by SQLAlchemy
    Core: one executemany INSERT per table and one commit, without the ORM
    session a unit of work opens, which a group commit (inserting, reading
    nothing back) does not need: leaving it out took about a quarter off the
    broker's CPU per GetToken at one request in flight (3.2 to 3.7 ms in four
    bench runs before, 2.0 to 2.9 ms in seven after). A single row is one
    statement that commits itself: one round trip instead of three.
    Losing the database raises ``DatabaseUnavailable``, and a connection the
    database had dropped before anything was sent is retried once."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def __call__(self, *batches: tuple[Table, Rows]) -> None:
        """Insert every batch's rows, all or none."""
        filled = [(table, list(rows)) for table, rows in batches if rows]
        if filled:
            await retry_stale(lambda: self._insert(filled))

    async def _insert(self, batches: list[tuple[Table, list[Mapping[str, Any]]]]) -> None:
        alone = len(batches) == 1 and len(batches[0][1]) == 1
        committing = False
        try:
            async with (self._autocommit if alone else self._engine).connect() as connection:
                for table, rows in batches:
                    await connection.execute(table.insert(), rows)
                committing = True
                await connection.commit()
        except SQLAlchemyError as exc:
            if not _connectivity_lost(exc):
                raise
            raise _unavailable(exc, committing=committing) from exc


async def retry_stale(unit: Callable[[], Awaitable[T]]) -> T:
    """Run ``unit``, a use case whose database work is one all-or-nothing unit
    of work, and once more if it failed only on a connection the database had
    dropped before the pool handed it out: after a database restart, the
    first use of each pooled connection fails that way."""
    try:
        return await unit()
    except DatabaseUnavailable as error:
        if not error.stale:
            raise
        log.info("retrying on a fresh connection after a stale one")
    return await unit()


@dataclass(frozen=True)
class ResealPage:
    """What one batch of ``reseal_column`` did: how many values it re-sealed,
    and the key of the last row it read (None once the column is done)."""

    resealed: int
    last: Any | None


async def reseal_column(
    session: AsyncSession,
    keyring: Keyring,
    key: Column[Any],
    sealed: Column[Any],
    aad: Callable[[Any], bytes],
    *,
    after: Any | None,
    limit: int,
) -> ResealPage:
    """Re-seal under the keyring's primary key the values, in up to ``limit``
    rows after ``after`` in key order, that another key sealed, so an old key
    can leave the keyring. The caller commits each batch on its own: locks
    last one batch, not the whole table.

    Each row is swapped only while it still holds the value read (compare and
    swap): a value written meanwhile, such as a refresh storing the tokens
    that replace the ones it spent, is never overwritten with the older
    plaintext. Such a row is read again and, if still under an old key,
    re-sealed from what it holds now."""
    table = sealed.table
    assert isinstance(table, Table)
    statement = select(key, sealed).where(sealed.is_not(None)).order_by(key).limit(limit)
    if after is not None:
        statement = statement.where(key > after)
    rows = (await session.execute(statement)).all()
    resealed = 0
    for row_key, value in rows:
        current: bytes | None = value
        while current is not None and keyring.needs_reseal(current):
            fresh = keyring.seal(keyring.open(current, aad(row_key)), aad(row_key))
            swapped = await session.execute(
                update(table).where(key == row_key, sealed == current).values({sealed.name: fresh})
            )
            if int(getattr(swapped, "rowcount", 0)) == 1:
                resealed += 1
                break
            current = await session.scalar(select(sealed).where(key == row_key))
    return ResealPage(resealed, rows[-1][0] if len(rows) == limit else None)
