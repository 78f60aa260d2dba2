"""Audit events: who did what to which resource, and when.

Every service records its admin changes with the same shape; the broker keeps
the one trail that ``GET /v1/audit-events`` lists.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from ._auth import current_caller
from ._db import utc
from ._errors import clip
from ._logging import redact

__all__ = ["AuditEvent", "current_actor"]

# The widths of the audit tables' text columns (the broker's trail, the policy's outbox).
_ACTOR_CHARS = 255
_ACTION_CHARS = 63
_RESOURCE_CHARS = 255


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

    def fitted(self) -> AuditEvent:
        """The event as stored: text too long for its column is clipped, with
        its length noted, so that no event is lost to an over-long name."""
        return replace(
            self,
            actor=clip(self.actor, _ACTOR_CHARS),
            action=clip(self.action, _ACTION_CHARS),
            resource=clip(self.resource, _RESOURCE_CHARS),
        )

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
