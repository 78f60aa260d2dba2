"""Use cases of the access decision: authorize a credential path, and say
whether an agent's session still stands."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from nexus_common import (
    AdminPrincipal,
    AgentMismatch,
    AgentNotFound,
    AgentPrincipal,
    FailedPrecondition,
    Principal,
    ValidationFailed,
)

from ..domain.access import (
    Action,
    Reach,
    Target,
    UserContext,
    agent_gate,
    decide,
    effective_bindings,
)
from ..domain.agents import Agent, could_be_agent_id
from ..domain.scopes import requested_scopes
from .agent_cache import AgentCache

__all__ = ["AccessDeps", "Grant", "UserDirectory", "authorize", "session_standing"]


class OboUser(UserContext, Protocol):
    @property
    def clearance_level(self) -> str: ...
    @property
    def expires_at(self) -> float | None: ...


class UserDirectory(Protocol):
    """Who a user context token belongs to (the customer's backend)."""

    async def user_context(self, token: str) -> OboUser: ...


@dataclass(frozen=True)
class AccessDeps:
    agents: AgentCache
    users: UserDirectory | None
    # NEXUS_ENVIRONMENT=development: unbound agents reach everything.
    allow_unbound: bool


@dataclass(frozen=True)
class Grant:
    agent: Agent | None
    scopes: tuple[str, ...]
    user: OboUser | None
    reach: Reach


async def _agent(deps: AccessDeps, agent_id: str) -> Agent:
    if not agent_id:
        raise ValidationFailed("agent_id is required", field="agent_id")
    agent = await deps.agents.get(agent_id) if could_be_agent_id(agent_id) else None
    if agent is None:
        raise AgentNotFound(f"no agent named {agent_id!r} is registered", agent_id=agent_id)
    return agent


async def authorize(
    deps: AccessDeps,
    caller: Principal,
    action: str,
    target: Target,
    *,
    agent_id: str = "",
    scopes: tuple[str, ...] = (),
    user_token: str | None = None,
) -> Grant:
    """Allow ``caller`` to take ``action`` on ``target``, or raise the denial."""
    session = action in Action.SESSIONS
    if isinstance(caller, AdminPrincipal) and not session:
        return Grant(None, (), None, decide(caller, action, None, None, target))
    if session:
        if isinstance(caller, AgentPrincipal) and caller.agent_id != agent_id:
            # Before the agent is looked up: another agent's existence is not theirs to learn.
            raise AgentMismatch(
                f"the agent {caller.agent_id!r} may act only as itself, not as {agent_id!r}",
                agent_id=agent_id,
            )
        acting = agent_id
        wanted = requested_scopes(scopes)
    else:
        assert isinstance(caller, AgentPrincipal)
        acting, wanted = caller.agent_id, ()
    agent = await _agent(deps, acting)
    bindings = effective_bindings(agent, target, allow_unbound=deps.allow_unbound)
    user: OboUser | None = None
    # An agent session may serve a signed-in user (its owner): it is then
    # confined to that user's connections, which only the backend can say.
    serves_user = action == Action.OBO_SESSION or (
        action == Action.AGENT_SESSION and user_token is not None
    )
    if serves_user:
        agent_gate(caller, action, agent, bindings, target, wanted)
        if deps.users is None:
            raise FailedPrecondition(
                "sessions for a user are not configured: set BACKEND_AUTH_URL on the policy service"
            )
        if user_token is None:
            raise ValidationFailed("user_context_token is required", field="user_context_token")
        user = await deps.users.user_context(user_token)
    reach = decide(caller, action, agent, bindings, target, wanted, user)
    return Grant(agent, wanted, user, reach)


async def session_standing(deps: AccessDeps, agent_id: str, issued_at: datetime) -> bool:
    """Whether a session issued to the agent at ``issued_at`` may still be used."""
    agent = await deps.agents.get(agent_id) if could_be_agent_id(agent_id) else None
    return agent is not None and agent.enabled and issued_at >= agent.sessions_valid_after
