"""Reading the audit trail."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from nexus_common import current_caller, decode_page_token, encode_page_token, page_size

from ..domain.audit import AuditEvent
from .unit_of_work import BrokerUnitOfWork

__all__ = ["AuditPage", "current_actor", "list_audit_events"]


def current_actor() -> str:
    """Who the audit trail names for the call in progress."""
    return str(current_caller.get() or "unknown")


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
) -> AuditPage:
    filters = {"resource": resource}
    position = decode_page_token(page_token, filters)
    before = (datetime.fromisoformat(position[0]), position[1]) if position else None
    limit = page_size(requested_size)
    async with uow() as work:
        found = await work.audit.list(resource=resource, before=before, limit=limit + 1)
    page = found[:limit]
    token = ""
    if len(found) > limit:
        token = encode_page_token([page[-1].event_time.isoformat(), page[-1].id], filters)
    return AuditPage(page, token)
