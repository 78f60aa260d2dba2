"""Deciding session requests: the agent gate, then (on behalf of a user) the user gate.

The agent gate is checked first: it needs no call to the customer's backend,
and a request the agent could never make should not reveal anything about
the user's permissions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from nexus_common import (
    AgentDisabled,
    AgentScopeNotAllowed,
    FailedPrecondition,
    UserPermissionMissing,
)

from ..domain.scopes import check_scopes, requested_scopes
from .agents import RegistryDeps, load_agent

__all__ = ["Decision", "UserContext", "UserDirectory", "evaluate_session"]


class UserContext(Protocol):
    @property
    def user_id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def clearance_level(self) -> str: ...
    @property
    def permissions(self) -> frozenset[str]: ...
    @property
    def expires_at(self) -> float | None: ...


class UserDirectory(Protocol):
    """Who a user context token belongs to (the customer's backend)."""

    async def user_context(self, token: str) -> UserContext: ...


@dataclass(frozen=True)
class Decision:
    agent_id: str
    scopes: tuple[str, ...]
    user: UserContext | None


async def evaluate_session(
    deps: RegistryDeps,
    users: UserDirectory | None,
    agent_id: str,
    scopes: list[str],
    user_token: str | None,
) -> Decision:
    wanted = requested_scopes(scopes)
    async with deps.uow() as uow:
        agent = await load_agent(uow, agent_id)
    if not agent.enabled:
        raise AgentDisabled(f"the agent {agent_id!r} is disabled", agent_id=agent_id)
    agent_gate = check_scopes(wanted, agent.allowed_scopes, "scopes")
    if not agent_gate.allowed:
        denied = ", ".join(agent_gate.denied)
        raise AgentScopeNotAllowed(
            f"the agent {agent_id!r} is not allowed {denied}: it may request only "
            "the scopes it was registered with",
            agent_id=agent_id,
            denied_scopes=denied,
        )
    if user_token is None:
        return Decision(agent_id, wanted, None)
    if users is None:
        raise FailedPrecondition(
            "on-behalf-of sessions are not configured: set BACKEND_AUTH_URL on the policy service"
        )
    user = await users.user_context(user_token)
    missing = [scope for scope in wanted if scope not in user.permissions]
    if missing:
        raise UserPermissionMissing(
            f"the user does not have {', '.join(missing)} among their permissions",
            missing=", ".join(missing),
            # The agent holds the user's token, so naming its user reveals nothing new.
            user_id=user.user_id,
            tenant_id=user.tenant_id,
        )
    return Decision(agent_id, wanted, user)
