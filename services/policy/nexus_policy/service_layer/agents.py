"""Use cases of the agent registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from nexus_common import (
    AgentDisabled,
    AgentNotFound,
    AuditEvent,
    Unauthenticated,
    ValidationFailed,
    decode_page_token,
    encode_page_token,
    page_size,
)

from ..adapters.repository import PolicyUnitOfWork
from ..domain.agents import (
    Agent,
    AgentKey,
    could_be_agent_id,
    digest_key,
    issue_key,
    key_id_of,
    validate_agent,
)

__all__ = [
    "AgentChange",
    "RegistryDeps",
    "authenticate_agent",
    "create_agent",
    "delete_agent",
    "get_agent",
    "list_agents",
    "load_agent",
    "rotate_agent_key",
    "update_agent",
]

_MAX_GRACE_SECONDS = 30 * 86400
_UNAUTHENTICATED = "a valid agent key is required"


@dataclass(frozen=True)
class RegistryDeps:
    uow: Callable[[], PolicyUnitOfWork]
    clock: Callable[[], datetime]


@dataclass(frozen=True)
class AgentChange:
    """What an update sets; None leaves a field as it is."""

    description: str | None = None
    allowed_scopes: tuple[str, ...] | None = None
    enabled: bool | None = None


async def _record(
    uow: PolicyUnitOfWork, action: str, agent: Agent, now: datetime, **details: Any
) -> None:
    """Record an admin change in the same transaction as the change; keys never
    appear, only the public key id."""
    await uow.outbox.add(
        AuditEvent.record(action, f"agents/{agent.agent_id}", now, key_id=agent.key_id, **details)
    )


async def load_agent(uow: PolicyUnitOfWork, agent_id: str, *, for_update: bool = False) -> Agent:
    if not agent_id:
        raise ValidationFailed("agent_id is required", field="agent_id")
    if not could_be_agent_id(agent_id):
        # Not echoed: it is no agent id, and could be anything up to the size limit.
        raise AgentNotFound("no agent with that agent_id is registered")
    agent = await uow.agents.get(agent_id, for_update=for_update)
    if agent is None:
        raise AgentNotFound(f"no agent named {agent_id!r} is registered", agent_id=agent_id)
    return agent


def _new_key(agent_id: str, now: datetime) -> tuple[AgentKey, str]:
    issued = issue_key()
    return AgentKey(issued.key_id, agent_id, digest_key(issued.key), now, None), issued.key


async def create_agent(
    deps: RegistryDeps,
    agent_id: str,
    description: str,
    allowed_scopes: tuple[str, ...],
    *,
    enabled: bool,
) -> tuple[Agent, str]:
    """Register an agent; returns it with its key, which is never shown again."""
    validate_agent(agent_id, description, allowed_scopes)
    now = deps.clock()
    key, secret = _new_key(agent_id, now)
    agent = Agent(agent_id, description, allowed_scopes, enabled, key.key_id, now, now)
    async with deps.uow() as uow:
        await uow.agents.add(agent, key)
        await _record(
            uow,
            "agent.create",
            agent,
            now,
            allowed_scopes=list(allowed_scopes),
            enabled=enabled,
        )
        await uow.commit()
    return agent, secret


async def get_agent(deps: RegistryDeps, agent_id: str) -> Agent:
    async with deps.uow() as uow:
        return await load_agent(uow, agent_id)


async def list_agents(deps: RegistryDeps, size: int, token: str) -> tuple[list[Agent], str]:
    limit = page_size(size)
    position = decode_page_token(token, {})
    after = str(position[0]) if position else None
    async with deps.uow() as uow:
        page = await uow.agents.list(after, limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return page, encode_page_token([page[-1].agent_id], {}) if more else ""


async def update_agent(deps: RegistryDeps, agent_id: str, change: AgentChange) -> Agent:
    async with deps.uow() as uow:
        agent = await load_agent(uow, agent_id, for_update=True)
        updated = replace(
            agent,
            description=agent.description if change.description is None else change.description,
            allowed_scopes=(
                agent.allowed_scopes if change.allowed_scopes is None else change.allowed_scopes
            ),
            enabled=agent.enabled if change.enabled is None else change.enabled,
            updated_at=deps.clock(),
        )
        validate_agent(updated.agent_id, updated.description, updated.allowed_scopes)
        await uow.agents.save(updated)
        await _record(
            uow,
            "agent.update",
            updated,
            updated.updated_at,
            allowed_scopes=list(updated.allowed_scopes),
            enabled=updated.enabled,
        )
        await uow.commit()
    return updated


async def delete_agent(deps: RegistryDeps, agent_id: str) -> None:
    async with deps.uow() as uow:
        agent = await load_agent(uow, agent_id, for_update=True)
        await uow.agents.delete(agent_id)
        await _record(uow, "agent.delete", agent, deps.clock())
        await uow.commit()


async def rotate_agent_key(
    deps: RegistryDeps, agent_id: str, grace_seconds: int
) -> tuple[Agent, str, datetime]:
    """Issue a new key; the previous ones stop after the grace period (at once for 0)."""
    if not 0 <= grace_seconds <= _MAX_GRACE_SECONDS:
        raise ValidationFailed(
            f"grace_period_seconds must be between 0 and {_MAX_GRACE_SECONDS}",
            field="grace_period_seconds",
        )
    now = deps.clock()
    until = now + timedelta(seconds=grace_seconds)
    async with deps.uow() as uow:
        agent = await load_agent(uow, agent_id, for_update=True)
        await uow.agents.retire_keys(agent_id, until, now)
        key, secret = _new_key(agent_id, now)
        await uow.agents.add_key(key)
        rotated = replace(agent, key_id=key.key_id, updated_at=now)
        await uow.agents.save(rotated)
        await _record(
            uow,
            "agent.rotate_key",
            rotated,
            now,
            previous_key_id=agent.key_id,
            previous_keys_expire_at=until.isoformat(),
        )
        await uow.commit()
    return rotated, secret, until


async def authenticate_agent(deps: RegistryDeps, presented: str) -> Agent:
    """The enabled agent holding this key. Every way a key can be wrong gets
    the same answer, so the answer tells an attacker nothing."""
    key_id = key_id_of(presented)
    if key_id is None:
        raise Unauthenticated(_UNAUTHENTICATED)
    now = deps.clock()
    async with deps.uow() as uow:
        held = await uow.agents.key_holder(key_id)
    if held is None or not held[0].matches(presented) or not held[0].usable_at(now):
        raise Unauthenticated(_UNAUTHENTICATED)
    agent = held[1]
    if not agent.enabled:
        raise AgentDisabled(f"the agent {agent.agent_id!r} is disabled", agent_id=agent.agent_id)
    return agent
