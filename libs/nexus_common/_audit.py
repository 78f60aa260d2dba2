"""Audit events: who did what to which resource, and when.

Every service records its admin changes with the same shape; the broker keeps
the one trail that ``GET /v1/audit-events`` lists.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._auth import current_caller
from ._db import utc
from ._logging import redact

__all__ = ["AuditEvent", "current_actor"]


def current_actor() -> str:
    """Who the audit trail names for the call in progress."""
    return str(current_caller.get() or "unknown")


@dataclass(frozen=True)
class AuditEvent:
    actor: str
    action: str
    resource: str
    event_time: datetime
    details: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @classmethod
    def record(cls, action: str, resource: str, now: datetime, **details: Any) -> AuditEvent:
        """An event by the current caller whose details have every secret-named
        value redacted."""
        return cls(current_actor(), action, resource, now, redact(details))

    @classmethod
    def from_row(cls, row: Any) -> AuditEvent:
        """An event read back from a table whose columns are named as its fields."""
        return cls(
            actor=row.actor,
            action=row.action,
            resource=row.resource,
            event_time=utc(row.event_time),
            details=row.details,
            id=row.id,
        )
