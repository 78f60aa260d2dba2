"""Refresh outcomes, stored by group commit.

A refresh ends in one write: the connection's new state (and tokens), its
lease given back, and an audit row, all conditional on the lease's fence.
Written one transaction each, the refresh loop spends its time in commits.
Here outcomes go by group commit (``GroupCommit``, as release audit rows do):
one that arrives while a write is in flight waits for it, then goes with every
other waiting one in the next transaction. Each outcome stays
conditional on its own fence, and each refresh learns whether its own was
stored only once that transaction has committed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nexus_common import AuditEvent, retry_stale

from ..adapters.group_commit import GroupCommit
from ..domain.connections import Connection, Lease, TokenSet
from .unit_of_work import BrokerUnitOfWork

__all__ = ["Outcome", "outcome_writer"]

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


def outcome_writer(uow: Callable[[], BrokerUnitOfWork]) -> GroupCommit[Outcome]:
    """``record(outcome)`` stores it and says whether its fence was still on the row."""

    async def store(outcomes: list[Outcome]) -> list[bool]:
        # All or nothing, so it may run again on a fresh connection.
        return await retry_stale(lambda: _store(outcomes, uow))

    return GroupCommit(store, _MOST_PER_WRITE, name="refresh-outcome")


async def _store(outcomes: list[Outcome], uow: Callable[[], BrokerUnitOfWork]) -> list[bool]:
    async with uow() as work:
        stored = await work.connections.save_leased(
            [(outcome.connection, outcome.lease, outcome.tokens) for outcome in outcomes]
        )
        if stored is not None:
            await _audit(work, outcomes, stored)
            return stored
    # A row moved under the read (SQLite has no row locks): undone; one by one.
    async with uow() as work:
        stored = [
            await work.connections.save(o.connection, lease=o.lease, tokens=o.tokens, release=True)
            for o in outcomes
        ]
        await _audit(work, outcomes, stored)
    return stored


async def _audit(work: BrokerUnitOfWork, outcomes: list[Outcome], stored: list[bool]) -> None:
    """Record the stored outcomes' events and commit."""
    await work.audit.add_all([o.event for o, saved in zip(outcomes, stored, strict=True) if saved])
    await work.commit()
