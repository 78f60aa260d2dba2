"""Engines, sessions, units of work and migrations for SQLite and PostgreSQL.

Services run on SQLAlchemy's asyncio engine: aiosqlite for the embedded
default and psycopg 3 for PostgreSQL. Alembic runs with the matching
synchronous driver, once at start-up.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any, Self

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

__all__ = ["SqlUnitOfWork", "create_engine", "migrate", "sync_url"]


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
    return create_async_engine(async_url, pool_pre_ping=True, hide_parameters=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed while a writer commits; foreign keys are off by default.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def migrate(url: str, script_location: Path, version_table: str) -> None:
    """Upgrade the schema to head. Each service has its own version table, so
    services may share one database."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    config.attributes["version_table"] = version_table
    command.upgrade(config, "head")


class SqlUnitOfWork:
    """``async with uow:`` opens a session that rolls back unless committed."""

    session: AsyncSession

    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._session_factory = session_factory

    async def __aenter__(self) -> Self:
        self.session = self._session_factory()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.session.rollback()
        await self.session.close()

    async def commit(self) -> None:
        await self.session.commit()
