"""Reading the audit trail, and writing its rows by group commit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from nexus_common import (
    AuditEvent,
    PageTokens,
    ValidationFailed,
    page_size,
    retry_stale,
)

from ..domain.sessions import Session
from .unit_of_work import BrokerUnitOfWork

__all__ = [
    "AuditPage",
    "list_audit_events",
    "record_audit_events",
    "write_audit_batch",
    "write_grants",
]


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent]
    next_page_token: str


async def list_audit_events(
    *,
    resource: str,
    requested_size: int,
    page_token: str,
    uow: Callable[[], BrokerUnitOfWork],
    pages: PageTokens,
) -> AuditPage:
    filters = {"resource": resource}
    position = pages.decode(page_token, filters)
    before = (datetime.fromisoformat(position[0]), position[1]) if position else None
    limit = page_size(requested_size)
    async with uow() as work:
        found = await work.audit.list(resource=resource, before=before, limit=limit + 1)
    page = found[:limit]
    token = ""
    if len(found) > limit:
        token = pages.encode([page[-1].event_time.isoformat(), page[-1].id], filters)
    return AuditPage(page, token)


async def record_audit_events(events: list[AuditEvent], uow: Callable[[], BrokerUnitOfWork]) -> int:
    """Record events another service made, each once however often delivered."""
    for event in events:
        if not event.id or not event.action or not event.resource:
            raise ValidationFailed(
                "each audit event needs an id, an action and a resource", field="audit_events"
            )
    async with uow() as work:
        recorded = await work.audit.add_new(events)
        await work.commit()
    return recorded


async def write_audit_batch(
    events: list[AuditEvent],
    uow: Callable[[], BrokerUnitOfWork],
    one_statement: Callable[[], BrokerUnitOfWork],
) -> list[bool]:
    """Store a group commit's batch: one INSERT, one commit (once more on a
    connection the database had dropped, when nothing was sent). A batch of
    one, all a lone caller ever has, is one statement that commits itself:
    ``one_statement`` makes units of work whose statements do."""
    return await write_grants([], events, one_statement if len(events) == 1 else uow)


async def write_grants(
    sessions: list[Session], events: list[AuditEvent], uow: Callable[[], BrokerUnitOfWork]
) -> list[bool]:
    """Store sessions and audit events in one transaction: one INSERT per
    table, one commit, once more on a connection the database had dropped.
    Every event is stored (one True each), or none is."""

    async def write() -> None:
        async with uow() as work:
            await work.sessions.add_all(sessions)
            await work.audit.add_all(events)
            await work.commit()

    await retry_stale(write)
    return [True] * len(events)
