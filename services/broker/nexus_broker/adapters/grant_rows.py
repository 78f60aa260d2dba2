"""The rows a group commit writes: new sessions and audit events, inserted by
SQLAlchemy Core (``nexus_common.BatchInsert``), never read back."""

from __future__ import annotations

from collections.abc import Sequence

from nexus_common import AuditEvent, BatchInsert
from sqlalchemy.ext.asyncio import AsyncEngine

from ..domain.sessions import Session
from .orm import agent_sessions, audit_events
from .repository import audit_row
from .session_repository import session_row

__all__ = ["GrantRows"]


class GrantRows:
    def __init__(self, engine: AsyncEngine) -> None:
        self._insert = BatchInsert(engine)

    async def insert(self, sessions: Sequence[Session], events: Sequence[AuditEvent]) -> None:
        """Every session and event stored in one transaction, or none."""
        await self._insert(
            (agent_sessions, [session_row(session) for session in sessions]),
            (audit_events, [audit_row(event) for event in events]),
        )
