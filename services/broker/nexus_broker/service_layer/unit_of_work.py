"""The broker's unit of work: one transaction, its repositories."""

from __future__ import annotations

from typing import Self

from nexus_common import Keyring, SqlUnitOfWork
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..adapters.connection_repository import AttemptRepository, ConnectionRepository
from ..adapters.repository import AuditRepository, ProviderRepository
from ..adapters.session_repository import (
    NarrowedTokenRepository,
    SessionRepository,
    SigningKeyRepository,
)

__all__ = ["BrokerUnitOfWork"]


class BrokerUnitOfWork(SqlUnitOfWork):
    providers: ProviderRepository
    connections: ConnectionRepository
    attempts: AttemptRepository
    audit: AuditRepository
    sessions: SessionRepository
    narrowed: NarrowedTokenRepository
    signing_keys: SigningKeyRepository

    def __init__(self, session_factory: async_sessionmaker[AsyncSession], keyring: Keyring) -> None:
        super().__init__(session_factory)
        self._keyring = keyring

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self.providers = ProviderRepository(self.session, self._keyring)
        self.connections = ConnectionRepository(self.session, self._keyring)
        self.attempts = AttemptRepository(self.session, self._keyring)
        self.audit = AuditRepository(self.session)
        self.sessions = SessionRepository(self.session)
        self.narrowed = NarrowedTokenRepository(self.session, self._keyring)
        self.signing_keys = SigningKeyRepository(self.session, self._keyring)
        return self
