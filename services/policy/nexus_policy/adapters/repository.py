"""Storage of agents and their key digests; rows never leave this module."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from nexus_common import AgentAlreadyExists, AuditEvent, SqlUnitOfWork, utc
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..domain.agents import Agent, AgentKey
from ..domain.bindings import Bindings
from .orm import agent_keys, agents, audit_outbox

__all__ = ["AgentRepository", "OutboxRepository", "PolicyUnitOfWork"]


def _agent(row: Any) -> Agent:
    return Agent(
        agent_id=row.agent_id,
        description=row.description,
        allowed_scopes=tuple(row.allowed_scopes),
        enabled=row.enabled,
        key_id=row.key_id,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
        bindings=Bindings.from_dict(row.bindings) if row.bindings is not None else None,
        sessions_valid_after=utc(row.sessions_valid_after),
    )


def _row(agent: Agent) -> dict[str, Any]:
    return asdict(agent) | {
        "allowed_scopes": list(agent.allowed_scopes),
        "bindings": agent.bindings.as_dict() if agent.bindings is not None else None,
    }


class AgentRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, agent: Agent, key: AgentKey) -> None:
        values = _row(agent)
        try:
            async with self._session.begin_nested():
                await self._session.execute(agents.insert().values(**values))
        except IntegrityError as exc:
            raise AgentAlreadyExists(
                f"an agent named {agent.agent_id!r} already exists", agent_id=agent.agent_id
            ) from exc
        await self.add_key(key)

    async def get(self, agent_id: str, *, for_update: bool = False) -> Agent | None:
        statement = select(agents).where(agents.c.agent_id == agent_id)
        if for_update:
            statement = statement.with_for_update()
        row = (await self._session.execute(statement)).first()
        return _agent(row) if row is not None else None

    async def list(self, after: str | None, limit: int) -> list[Agent]:
        statement = select(agents).order_by(agents.c.agent_id).limit(limit)
        if after is not None:
            statement = statement.where(agents.c.agent_id > after)
        return [_agent(row) for row in await self._session.execute(statement)]

    async def save(self, agent: Agent) -> None:
        values = _row(agent)
        await self._session.execute(
            update(agents).where(agents.c.agent_id == agent.agent_id).values(**values)
        )

    async def delete(self, agent_id: str) -> bool:
        await self._session.execute(delete(agent_keys).where(agent_keys.c.agent_id == agent_id))
        result = await self._session.execute(delete(agents).where(agents.c.agent_id == agent_id))
        return int(getattr(result, "rowcount", 0)) > 0

    async def add_key(self, key: AgentKey) -> None:
        await self._session.execute(agent_keys.insert().values(**asdict(key)))

    async def key_holder(self, key_id: str) -> tuple[AgentKey, Agent] | None:
        """A key and its agent, in one query: every agent call authenticates."""
        row = (
            await self._session.execute(
                select(
                    agents,
                    agent_keys.c.digest,
                    agent_keys.c.created_at.label("key_created_at"),
                    agent_keys.c.expires_at.label("key_expires_at"),
                )
                .join(agent_keys, agent_keys.c.agent_id == agents.c.agent_id)
                .where(agent_keys.c.key_id == key_id)
            )
        ).first()
        if row is None:
            return None
        key = AgentKey(
            key_id=key_id,
            agent_id=row.agent_id,
            digest=row.digest,
            created_at=utc(row.key_created_at),
            expires_at=utc(row.key_expires_at),
        )
        return key, _agent(row)

    async def retire_keys(self, agent_id: str, until: datetime, now: datetime) -> None:
        """Keys still usable stop at ``until`` (never later than they already
        would); keys already past use are forgotten."""
        mine = agent_keys.c.agent_id == agent_id
        await self._session.execute(
            delete(agent_keys).where(
                and_(mine, agent_keys.c.expires_at.is_not(None), agent_keys.c.expires_at <= now)
            )
        )
        await self._session.execute(
            update(agent_keys)
            .where(
                and_(
                    mine,
                    or_(agent_keys.c.expires_at.is_(None), agent_keys.c.expires_at > until),
                )
            )
            .values(expires_at=until)
        )


class OutboxRepository:
    """Audit events not yet handed to the broker, oldest first."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, event: AuditEvent) -> None:
        await self._session.execute(audit_outbox.insert().values(**asdict(event.fitted())))

    async def oldest(self, limit: int) -> list[AuditEvent]:
        rows = await self._session.execute(
            select(audit_outbox).order_by(audit_outbox.c.event_time, audit_outbox.c.id).limit(limit)
        )
        return [AuditEvent.from_row(row) for row in rows]

    async def remove(self, ids: list[str]) -> None:
        await self._session.execute(delete(audit_outbox).where(audit_outbox.c.id.in_(ids)))


class PolicyUnitOfWork(SqlUnitOfWork):
    agents: AgentRepository
    outbox: OutboxRepository

    async def __aenter__(self) -> PolicyUnitOfWork:
        await super().__aenter__()
        self.agents = AgentRepository(self.session)
        self.outbox = OutboxRepository(self.session)
        return self
