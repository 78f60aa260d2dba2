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
)

from ..adapters.grant_rows import GrantRows
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


async def write_audit_batch(events: list[AuditEvent], rows: GrantRows) -> list[bool]:
    """Store a group commit's batch of release audit events: one INSERT, one
    commit (a batch of one, all a lone caller ever has, is one statement that
    commits itself)."""
    return await write_grants([], events, rows)


async def write_grants(
    sessions: list[Session], events: list[AuditEvent], rows: GrantRows
) -> list[bool]:
    """Store sessions and audit events in one transaction: one INSERT per
    table, one commit, once more on a connection the database had dropped.
    Every event is stored (one True each), or none is."""
    await rows.insert(sessions, events)
    return [True] * len(events)
