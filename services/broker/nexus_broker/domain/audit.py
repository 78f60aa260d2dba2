"""Audit events: who did what to which resource, and when."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nexus_common import redact

__all__ = ["AuditEvent"]


@dataclass(frozen=True)
class AuditEvent:
    actor: str
    action: str
    resource: str
    event_time: datetime
    details: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @classmethod
    def record(
        cls, actor: str, action: str, resource: str, now: datetime, **details: Any
    ) -> AuditEvent:
        """An event whose details have every secret-named value redacted."""
        return cls(actor, action, resource, now, redact(details))
