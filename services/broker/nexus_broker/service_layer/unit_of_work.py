"""The broker's unit of work: one transaction, its repositories.

Writes of connections and providers drop their rows from the row cache right
after the commit, before the use case that made them answers: this is the one
place where a write in this process reaches the cache. A commit that failed
drops them too, since it may have committed all the same.
"""

from __future__ import annotations

from typing import Self

from nexus_common import Keyring, SqlUnitOfWork
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..adapters.connection_repository import AttemptRepository, ConnectionRepository
from ..adapters.repository import AuditRepository, ProviderRepository
from ..adapters.row_cache import RowCache
from ..adapters.session_repository import (
    NarrowedTokenRepository,
    SessionRepository,
    SigningKeyRepository,
)
from ..adapters.writes import Writes

__all__ = ["BrokerUnitOfWork"]


class BrokerUnitOfWork(SqlUnitOfWork):
    providers: ProviderRepository
    connections: ConnectionRepository
    attempts: AttemptRepository
    audit: AuditRepository
    sessions: SessionRepository
    narrowed: NarrowedTokenRepository
    signing_keys: SigningKeyRepository

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        cache: RowCache | None = None,
    ) -> None:
        super().__init__(session_factory)
        self._keyring = keyring
        self._cache = cache
        self._writes = Writes()

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self._writes = Writes()
        self.providers = ProviderRepository(self.session, self._keyring, self._writes)
        self.connections = ConnectionRepository(self.session, self._keyring, self._writes)
        self.attempts = AttemptRepository(self.session, self._keyring)
        self.audit = AuditRepository(self.session)
        self.sessions = SessionRepository(self.session)
        self.narrowed = NarrowedTokenRepository(self.session, self._keyring)
        self.signing_keys = SigningKeyRepository(self.session, self._keyring)
        return self

    async def commit(self) -> None:
        try:
            await super().commit()
        finally:
            written = self._writes.take()
            if self._cache is not None:
                self._cache.publish(written)
