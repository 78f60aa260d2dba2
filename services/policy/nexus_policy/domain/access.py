"""The one access decision: may this caller use this connection for these scopes.

Callers are values: an ``AdminPrincipal`` (the customer's backend, full
access) or an ``AgentPrincipal``. Every path that releases or refreshes a credential asks
``decide`` before anything else, and it denies by default:

    admin                 GetToken and refresh: allowed. Sessions: decided as
                          the agent the session is for.
    agent                 must exist, be enabled and be bound (or the deployment
                          allows unbound agents), and may act only as itself.
    provider              must be in the agent's bindings.
    GetToken, refresh     not for on_behalf_of_only agents; the connection's
                          workspace must be bound; its granted scopes must lie
                          within allowed_scopes unless full_connection_access.
    agent session         not for on_behalf_of_only agents; scopes within
                          allowed_scopes; the connection (or the workspace
                          asked for) must be bound. With an owner (the
                          signed-in user a multi-user agent serves), the
                          connection must also be one the owner owns.
    on-behalf-of session  scopes within allowed_scopes and within the user's
                          permissions; the connection (or workspace) must be
                          one the user owns, and bound unless the agent is
                          on_behalf_of_only or bound to every workspace.

A user owns a connection when its workspace is among the user's and its tenant
(recorded at RequestConnection) is the user's or none: ids are not unique across
tenants, so user ``1001`` of one tenant never reaches another tenant's ``1001``.

Each denial is an error with a stable reason and a message that names the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from nexus_common import (
    AdminPrincipal,
    AgentDisabled,
    AgentMismatch,
    AgentNotBound,
    AgentOboOnly,
    AgentPrincipal,
    AgentScopeNotAllowed,
    ConnectionExceedsAgentScopes,
    Principal,
    ProviderNotBound,
    UserPermissionMissing,
    UserWorkspaceNotOwned,
    WorkspaceNotBound,
)

from .agents import Agent
from .bindings import OPEN_BINDINGS, Bindings
from .scopes import check_scopes

__all__ = [
    "Action",
    "ConnectionRef",
    "Reach",
    "Target",
    "UserContext",
    "agent_gate",
    "decide",
    "effective_bindings",
    "owns",
]


class Action:
    GET_TOKEN = "get_token"  # noqa: S105 - an action name
    REFRESH = "refresh"
    AGENT_SESSION = "agent_session"
    OBO_SESSION = "obo_session"

    SESSIONS = (AGENT_SESSION, OBO_SESSION)


class UserContext(Protocol):
    @property
    def user_id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def permissions(self) -> frozenset[str]: ...
    @property
    def workspaces(self) -> frozenset[str]: ...


@dataclass(frozen=True)
class ConnectionRef:
    connection_id: str
    workspace_id: str
    granted_scopes: tuple[str, ...]
    # The app's tenant of the workspace; "" for none.
    tenant_id: str = ""


@dataclass(frozen=True)
class Target:
    """What the caller reaches for."""

    provider_id: str
    provider_name: str
    # None for a session that names no connection: the decision says where to look.
    connection: ConnectionRef | None = None
    # The workspace a session asked to look in, if any.
    workspace_id: str = ""


@dataclass(frozen=True)
class Reach:
    """Where a session may look for its connection: these workspaces, or any
    (None); and, for a user's session, only connections of ``tenant_id`` or of
    no tenant (None: any tenant)."""

    workspaces: frozenset[str] | None
    tenant_id: str | None = None


_ANYWHERE = Reach(None)


def _patch_hint(agent_id: str, bindings: dict[str, object]) -> str:
    return f"PATCH /admin/v1/agents/{agent_id} {json.dumps({'bindings': bindings})}"


def effective_bindings(agent: Agent, target: Target, *, allow_unbound: bool) -> Bindings:
    """The agent's bindings, or the deployment's rule for an agent without any."""
    if agent.bindings is not None:
        return agent.bindings
    if allow_unbound:
        return OPEN_BINDINGS
    workspace = target.connection.workspace_id if target.connection else target.workspace_id
    hint = _patch_hint(
        agent.agent_id,
        {"providers": [target.provider_name], "workspaces": [workspace or "<workspace_id>"]},
    )
    raise AgentNotBound(
        f"the agent {agent.agent_id!r} has no bindings, and this deployment gives unbound "
        f"agents nothing; an admin binds it with: {hint}",
        agent_id=agent.agent_id,
    )


def _check_agent(caller: Principal, agent: Agent) -> None:
    if isinstance(caller, AgentPrincipal) and caller.agent_id != agent.agent_id:
        raise AgentMismatch(
            f"the agent {caller.agent_id!r} may act only as itself, not as {agent.agent_id!r}",
            agent_id=agent.agent_id,
        )
    if not agent.enabled:
        raise AgentDisabled(f"the agent {agent.agent_id!r} is disabled", agent_id=agent.agent_id)


def _check_provider(agent: Agent, bindings: Bindings, target: Target) -> None:
    if not bindings.allows_provider(target.provider_id, target.provider_name):
        providers = [*bindings.providers, target.provider_name]
        hint = _patch_hint(agent.agent_id, {**bindings.as_dict(), "providers": providers})
        raise ProviderNotBound(
            f"the agent {agent.agent_id!r} is not bound to the provider "
            f"{target.provider_name!r}; an admin adds it with: {hint}",
            agent_id=agent.agent_id,
            provider=target.provider_name,
        )


def _workspace_not_bound(agent: Agent, bindings: Bindings, workspace: str) -> WorkspaceNotBound:
    hint = _patch_hint(
        agent.agent_id, {**bindings.as_dict(), "workspaces": [*bindings.workspaces, workspace]}
    )
    return WorkspaceNotBound(
        f"the agent {agent.agent_id!r} may not act in the workspace {workspace!r}; "
        f"an admin adds it with: {hint}",
        agent_id=agent.agent_id,
        workspace_id=workspace,
    )


def _not_on_behalf_only(agent: Agent, bindings: Bindings) -> None:
    if bindings.on_behalf_of_only:
        raise AgentOboOnly(
            f"the agent {agent.agent_id!r} may act only on behalf of a user: open an "
            "on-behalf-of session (POST /v1/obo-sessions) with the user's token",
            agent_id=agent.agent_id,
        )


def _check_scopes(agent: Agent, scopes: tuple[str, ...]) -> None:
    gate = check_scopes(scopes, agent.allowed_scopes, "scopes")
    if not gate.allowed:
        denied = ", ".join(gate.denied)
        raise AgentScopeNotAllowed(
            f"the agent {agent.agent_id!r} is not allowed {denied}: it may request only "
            "the scopes it was registered with",
            agent_id=agent.agent_id,
            denied_scopes=denied,
        )


def _check_connection_scopes(agent: Agent, bindings: Bindings, connection: ConnectionRef) -> None:
    beyond = sorted(set(connection.granted_scopes) - set(agent.allowed_scopes))
    if beyond and not bindings.full_connection_access:
        hint = _patch_hint(agent.agent_id, {**bindings.as_dict(), "full_connection_access": True})
        raise ConnectionExceedsAgentScopes(
            f"the connection {connection.connection_id} was granted {', '.join(beyond)}, beyond "
            f"what the agent {agent.agent_id!r} is allowed; ask for an agent session with the "
            "scopes you need (POST /v1/agent-sessions), which hands out a token narrowed to "
            f"them, or an admin grants the whole connection with: {hint}",
            agent_id=agent.agent_id,
            connection_id=connection.connection_id,
            beyond_scopes=", ".join(beyond),
        )


def _check_permissions(user: UserContext, scopes: tuple[str, ...]) -> None:
    missing = [scope for scope in scopes if scope not in user.permissions]
    if missing:
        raise UserPermissionMissing(
            f"the user does not have {', '.join(missing)} among their permissions",
            missing=", ".join(missing),
            # The agent holds the user's token, so naming its user reveals nothing new.
            user_id=user.user_id,
            tenant_id=user.tenant_id,
        )


def owns(user: UserContext, workspace_id: str, tenant_id: str) -> bool:
    """Whether the user owns a connection in ``workspace_id`` of ``tenant_id``."""
    return workspace_id in user.workspaces and tenant_id in ("", user.tenant_id)


def _owned_reach(agent: Agent, bindings: Bindings, user: UserContext, target: Target) -> Reach:
    """Where a session serving ``user`` may look: the user's own workspaces,
    within the agent's bindings unless it acts only for users or everywhere."""
    connection = target.connection
    asked = connection.workspace_id if connection else target.workspace_id
    tenant = connection.tenant_id if connection else ""
    if asked and not owns(user, asked, tenant):
        raise UserWorkspaceNotOwned(
            f"the user {user.user_id!r} does not own the workspace {asked!r}; a session for "
            "a user reaches only that user's workspaces, in their tenant",
            user_id=user.user_id,
            workspace_id=asked,
        )
    owned = user.workspaces
    if bindings.on_behalf_of_only or bindings.any_workspace:
        return Reach(owned, user.tenant_id)
    if asked and not bindings.allows_workspace(asked):
        raise _workspace_not_bound(agent, bindings, asked)
    return Reach(frozenset(owned & set(bindings.workspaces)), user.tenant_id)


def agent_gate(
    caller: Principal,
    action: str,
    agent: Agent,
    bindings: Bindings,
    target: Target,
    scopes: tuple[str, ...] = (),
) -> None:
    """What can be decided from the agent alone. Checked before the customer's
    backend is asked about a user: a request the agent could never make must
    not reveal anything about the user's permissions."""
    _check_agent(caller, agent)
    _check_provider(agent, bindings, target)
    if action != Action.OBO_SESSION:
        _not_on_behalf_only(agent, bindings)
    if action in Action.SESSIONS:
        _check_scopes(agent, scopes)


def decide(
    caller: Principal,
    action: str,
    agent: Agent | None,
    bindings: Bindings | None,
    target: Target,
    scopes: tuple[str, ...] = (),
    user: UserContext | None = None,
) -> Reach:
    """Allow (returning where a session may look) or raise the denial.

    ``agent`` and ``bindings`` are the agent acting (the caller, or the agent a
    session is for); ``user`` is set, once the customer's backend vouched for
    them, for on-behalf-of sessions and for agent sessions serving a user.
    """
    if isinstance(caller, AdminPrincipal) and action not in Action.SESSIONS:
        return _ANYWHERE
    if agent is None or bindings is None:
        raise AssertionError("an agent's decision needs the agent and its bindings")
    agent_gate(caller, action, agent, bindings, target, scopes)
    if action == Action.OBO_SESSION:
        if user is None:
            raise AssertionError("an on-behalf-of decision needs its user")
        _check_permissions(user, scopes)
        return _owned_reach(agent, bindings, user, target)
    if user is not None:
        if action != Action.AGENT_SESSION:
            raise AssertionError("only sessions serve a user")
        # The agent's own scopes, in the user's own workspaces.
        return _owned_reach(agent, bindings, user, target)
    connection = target.connection
    workspace = connection.workspace_id if connection else target.workspace_id
    if workspace and not bindings.allows_workspace(workspace):
        raise _workspace_not_bound(agent, bindings, workspace)
    if connection is not None and action != Action.AGENT_SESSION:
        _check_connection_scopes(agent, bindings, connection)
    if bindings.any_workspace:
        return _ANYWHERE
    return Reach(frozenset(bindings.workspaces))
