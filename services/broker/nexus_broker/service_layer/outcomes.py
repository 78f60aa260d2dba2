"""Refresh outcomes, stored by group commit.

A refresh ends in one write: the connection's new state (and tokens), its
lease given back, and an audit row, all conditional on the lease's fence.
Written one transaction each, the refresh loop spends its time in commits.
Here an outcome that arrives while a write is in flight waits for it, then
goes with every other waiting one in the next transaction. Each outcome stays
conditional on its own fence, and each refresh learns whether its own was
stored only once that transaction has committed. The queue needs no bound of
its own: every refresh waits for its outcome, so it never holds more outcomes
than refreshes are running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from nexus_common import AuditEvent, retry_stale

from ..domain.connections import Connection, Lease, TokenSet
from .unit_of_work import BrokerUnitOfWork

__all__ = ["Outcome", "OutcomeWriter"]

# The most outcomes in one transaction: bounds how long its row locks are held.
_MOST_PER_WRITE = 200


@dataclass(frozen=True)
class Outcome:
    """A refresh's result: stored, the lease released and ``event`` recorded,
    only while the row still carries ``lease``'s fence."""

    lease: Lease
    connection: Connection
    tokens: TokenSet | None
    event: AuditEvent


@dataclass
class OutcomeWriter:
    uow: Callable[[], BrokerUnitOfWork]
    _waiting: list[tuple[Outcome, asyncio.Future[bool]]] = field(default_factory=list)
    _writing: asyncio.Task[None] | None = None

    async def write(self, outcome: Outcome) -> bool:
        """Store ``outcome``; False when its lease's fence was no longer on the row."""
        stored: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((outcome, stored))
        if self._writing is None:
            self._writing = asyncio.create_task(self._drain())
        return await stored

    async def _drain(self) -> None:
        group: list[tuple[Outcome, asyncio.Future[bool]]] = []
        try:
            while self._waiting:
                group = self._waiting[:_MOST_PER_WRITE]
                del self._waiting[:_MOST_PER_WRITE]
                try:
                    stored = await self._store_once_more_if_stale([o for o, _ in group])
                except Exception as exc:
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), saved in zip(group, stored, strict=True):
                    if not future.done():
                        future.set_result(saved)
                group = []
        finally:
            self._writing = None
            # Cancelled (the broker stops): nobody is left waiting forever.
            for _, future in group + self._waiting:
                future.cancel()
            self._waiting.clear()

    async def _store_once_more_if_stale(self, outcomes: list[Outcome]) -> list[bool]:
        # All or nothing, so it may run again on a fresh connection.
        return await retry_stale(lambda: self._store(outcomes))

    async def _store(self, outcomes: list[Outcome]) -> list[bool]:
        async with self.uow() as uow:
            stored = await uow.connections.save_leased(
                [(outcome.connection, outcome.lease, outcome.tokens) for outcome in outcomes]
            )
            if stored is not None:
                await self._audit(uow, outcomes, stored)
                return stored
        # A row moved under the read (SQLite has no row locks): undone; one by one.
        async with self.uow() as uow:
            stored = [
                await uow.connections.save(
                    o.connection, lease=o.lease, tokens=o.tokens, release=True
                )
                for o in outcomes
            ]
            await self._audit(uow, outcomes, stored)
        return stored

    @staticmethod
    async def _audit(uow: BrokerUnitOfWork, outcomes: list[Outcome], stored: list[bool]) -> None:
        """Record the stored outcomes' events and commit."""
        await uow.audit.add_all(
            [o.event for o, saved in zip(outcomes, stored, strict=True) if saved]
        )
        await uow.commit()
