"""Use cases of the agent registry."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from nexus_common import (
    AgentDisabled,
    AgentNotFound,
    AuditEvent,
    PageTokens,
    Unauthenticated,
    ValidationFailed,
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
from ..domain.bindings import ANY, Bindings
from .agent_cache import AgentCache

__all__ = [
    "AgentChange",
    "RegistryDeps",
    "SessionTerminator",
    "authenticate_agent",
    "create_agent",
    "delete_agent",
    "get_agent",
    "list_agents",
    "load_agent",
    "rotate_agent_key",
    "update_agent",
]

log = logging.getLogger("nexus.agents")

_MAX_GRACE_SECONDS = 30 * 86400
_UNAUTHENTICATED = "a valid agent key is required"


class SessionTerminator(Protocol):
    """Ends an agent's open sessions where they live (the broker)."""

    async def end_sessions(self, agent_id: str) -> None: ...


@dataclass(frozen=True)
class RegistryDeps:
    uow: Callable[[], PolicyUnitOfWork]
    clock: Callable[[], datetime]
    agents: AgentCache
    pages: PageTokens
    sessions: SessionTerminator | None = None


@dataclass(frozen=True)
class AgentChange:
    """What an update sets; None leaves a field as it is."""

    description: str | None = None
    allowed_scopes: tuple[str, ...] | None = None
    enabled: bool | None = None
    # With set_bindings, bindings replace the agent's (None unbinds it).
    set_bindings: bool = False
    bindings: Bindings | None = None


def _bindings_audit(bindings: Bindings | None) -> dict[str, Any]:
    """How an audit event shows bindings; an agent bound to every workspace is
    flagged, so a reviewer can find each one."""
    if bindings is None:
        return {"bindings": None}
    return {"bindings": bindings.as_dict(), "all_workspaces": bindings.workspaces == (ANY,)}


async def _end_sessions(deps: RegistryDeps, agent_id: str) -> None:
    """Tell the broker at once; if it cannot be told, the sessions are still
    over (introspection and every release check ``sessions_valid_after``), and
    only revoking their narrowed tokens at providers is left undone."""
    deps.agents.invalidate(agent_id)
    if deps.sessions is None:
        return
    try:
        await deps.sessions.end_sessions(agent_id)
    except Exception:
        log.warning("could not ask the broker to end the sessions of %s", agent_id, exc_info=True)


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
    bindings: Bindings | None = None,
) -> tuple[Agent, str]:
    """Register an agent; returns it with its key, which is never shown again."""
    validate_agent(agent_id, description, allowed_scopes, bindings)
    now = deps.clock()
    key, secret = _new_key(agent_id, now)
    agent = Agent(
        agent_id, description, allowed_scopes, enabled, key.key_id, now, now, bindings, now
    )
    async with deps.uow() as uow:
        await uow.agents.add(agent, key)
        await _record(
            uow,
            "agent.create",
            agent,
            now,
            allowed_scopes=list(allowed_scopes),
            enabled=enabled,
            **_bindings_audit(bindings),
        )
        await uow.commit()
    deps.agents.invalidate(agent_id)
    return agent, secret


async def get_agent(deps: RegistryDeps, agent_id: str) -> Agent:
    async with deps.uow() as uow:
        return await load_agent(uow, agent_id)


async def list_agents(deps: RegistryDeps, size: int, token: str) -> tuple[list[Agent], str]:
    limit = page_size(size)
    position = deps.pages.decode(token, {})
    after = str(position[0]) if position else None
    async with deps.uow() as uow:
        page = await uow.agents.list(after, limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return page, deps.pages.encode([page[-1].agent_id], {}) if more else ""


async def update_agent(deps: RegistryDeps, agent_id: str, change: AgentChange) -> Agent:
    """Change an agent; disabling it ends its sessions at once."""
    now = deps.clock()
    async with deps.uow() as uow:
        agent = await load_agent(uow, agent_id, for_update=True)
        enabled = agent.enabled if change.enabled is None else change.enabled
        disabling = agent.enabled and not enabled
        updated = replace(
            agent,
            description=agent.description if change.description is None else change.description,
            allowed_scopes=(
                agent.allowed_scopes if change.allowed_scopes is None else change.allowed_scopes
            ),
            enabled=enabled,
            bindings=change.bindings if change.set_bindings else agent.bindings,
            updated_at=now,
            sessions_valid_after=now if disabling else agent.sessions_valid_after,
        )
        validate_agent(
            updated.agent_id, updated.description, updated.allowed_scopes, updated.bindings
        )
        await uow.agents.save(updated)
        await _record(
            uow,
            "agent.update",
            updated,
            updated.updated_at,
            allowed_scopes=list(updated.allowed_scopes),
            enabled=updated.enabled,
            sessions_ended=disabling,
            **_bindings_audit(updated.bindings),
        )
        await uow.commit()
    deps.agents.invalidate(agent_id)
    if disabling:
        await _end_sessions(deps, agent_id)
    return updated


async def delete_agent(deps: RegistryDeps, agent_id: str) -> None:
    """Delete an agent and its keys; its sessions end at once."""
    async with deps.uow() as uow:
        agent = await load_agent(uow, agent_id, for_update=True)
        await uow.agents.delete(agent_id)
        await _record(uow, "agent.delete", agent, deps.clock(), sessions_ended=True)
        await uow.commit()
    await _end_sessions(deps, agent_id)


async def rotate_agent_key(
    deps: RegistryDeps, agent_id: str, grace_seconds: int
) -> tuple[Agent, str, datetime]:
    """Issue a new key; the previous ones stop after the grace period. With no
    grace period the agent's sessions end too: whoever held the old key may
    hold them."""
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
        ending = grace_seconds == 0
        rotated = replace(
            agent,
            key_id=key.key_id,
            updated_at=now,
            sessions_valid_after=now if ending else agent.sessions_valid_after,
        )
        await uow.agents.save(rotated)
        await _record(
            uow,
            "agent.rotate_key",
            rotated,
            now,
            previous_key_id=agent.key_id,
            previous_keys_expire_at=until.isoformat(),
            sessions_ended=ending,
        )
        await uow.commit()
    deps.agents.invalidate(agent_id)
    if ending:
        await _end_sessions(deps, agent_id)
    return rotated, secret, until


async def authenticate_agent(deps: RegistryDeps, presented: str) -> tuple[Agent, datetime | None]:
    """The enabled agent holding this key, and when the key stops working if
    a rotation retired it. Every way a key can be wrong gets the same answer,
    so the answer tells an attacker nothing."""
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
    return agent, held[0].expires_at
