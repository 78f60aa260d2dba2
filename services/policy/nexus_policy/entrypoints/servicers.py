"""Thin servicers: proto in, use case, proto out. Errors are mapped by the interceptor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

from google.protobuf import empty_pb2, timestamp_pb2
from grpc.aio import ServicerContext as Context
from nexus.policy.v1 import agents_pb2, agents_pb2_grpc, policy_pb2, policy_pb2_grpc
from nexus_common import AdminPrincipal, AgentPrincipal, Principal, ValidationFailed

from ..domain.access import Action, ConnectionRef, Target
from ..domain.agents import Agent
from ..domain.bindings import Bindings
from ..domain.scopes import check_scopes
from ..service_layer import agents
from ..service_layer.access import AccessDeps, authorize, session_standing
from ..service_layer.agent_changes import AgentChanges

__all__ = ["AgentRegistryServicer", "PolicyServicer"]

_UPDATABLE = ("description", "allowed_scopes", "enabled", "bindings")
_ACTIONS = {
    policy_pb2.AccessRequest.ACTION_GET_TOKEN: Action.GET_TOKEN,
    policy_pb2.AccessRequest.ACTION_REFRESH: Action.REFRESH,
    policy_pb2.AccessRequest.ACTION_AGENT_SESSION: Action.AGENT_SESSION,
    policy_pb2.AccessRequest.ACTION_OBO_SESSION: Action.OBO_SESSION,
}


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def agent_message(agent: Agent) -> agents_pb2.Agent:
    message = agents_pb2.Agent(
        agent_id=agent.agent_id,
        description=agent.description,
        allowed_scopes=agent.allowed_scopes,
        enabled=agent.enabled,
        key_id=agent.key_id,
        create_time=_timestamp(agent.created_at),
        update_time=_timestamp(agent.updated_at),
    )
    if agent.bindings is not None:
        bound = agent.bindings
        message.bindings.CopyFrom(
            agents_pb2.AgentBindings(
                providers=bound.providers,
                workspaces=bound.workspaces,
                on_behalf_of_only=bound.on_behalf_of_only,
                full_connection_access=bound.full_connection_access,
            )
        )
    return message


def _bindings(given: agents_pb2.Agent) -> Bindings | None:
    if not given.HasField("bindings"):
        return None
    bound = given.bindings
    return Bindings(
        providers=tuple(bound.providers),
        workspaces=tuple(bound.workspaces),
        on_behalf_of_only=bound.on_behalf_of_only,
        full_connection_access=bound.full_connection_access,
    )


def _caller(principal: policy_pb2.Principal) -> Principal:
    if principal.kind == policy_pb2.Principal.KIND_ADMIN:
        return AdminPrincipal(principal.id)
    if principal.kind == policy_pb2.Principal.KIND_AGENT and principal.id:
        return AgentPrincipal(principal.id)
    raise ValidationFailed("caller must be an admin or an agent", field="caller")


def _target(request: policy_pb2.AccessRequest) -> Target:
    connection = None
    if request.HasField("connection"):
        given = request.connection
        connection = ConnectionRef(
            given.connection_id, given.workspace_id, tuple(given.granted_scopes), given.tenant_id
        )
    return Target(request.provider_id, request.provider_name, connection, request.workspace_id)


def _change(request: agents_pb2.UpdateAgentRequest) -> agents.AgentChange:
    given = request.agent
    paths = list(request.update_mask.paths)
    if not paths:
        paths = [
            name
            for name, present in (
                ("description", bool(given.description)),
                ("allowed_scopes", bool(given.allowed_scopes)),
                ("enabled", given.HasField("enabled")),
                ("bindings", given.HasField("bindings")),
            )
            if present
        ]
    unknown = [p for p in paths if p not in _UPDATABLE]
    if unknown:
        raise ValidationFailed(
            f"update_mask names {', '.join(unknown)}; agents can change only "
            f"{', '.join(_UPDATABLE)}",
            field="update_mask",
        )
    if not paths:
        raise ValidationFailed("the update changes nothing", field="update_mask")
    if "enabled" in paths and not given.HasField("enabled"):
        # AIP-134 would write the field's default; for a switch that guards
        # access, a value the caller did not send must not decide either way.
        raise ValidationFailed(
            "update_mask names enabled but the agent gives no enabled value; send true or false",
            field="agent.enabled",
        )
    return agents.AgentChange(
        description=given.description if "description" in paths else None,
        allowed_scopes=tuple(given.allowed_scopes) if "allowed_scopes" in paths else None,
        enabled=given.enabled if "enabled" in paths else None,
        set_bindings="bindings" in paths,
        bindings=_bindings(given),
    )


class AgentRegistryServicer(agents_pb2_grpc.AgentRegistryServiceServicer):
    def __init__(self, deps: agents.RegistryDeps) -> None:
        self._deps = deps

    async def CreateAgent(
        self, request: agents_pb2.CreateAgentRequest, context: Context
    ) -> agents_pb2.CreateAgentResponse:
        given = request.agent
        agent, key = await agents.create_agent(
            self._deps,
            given.agent_id,
            given.description,
            tuple(given.allowed_scopes),
            enabled=given.enabled if given.HasField("enabled") else True,
            bindings=_bindings(given),
        )
        return agents_pb2.CreateAgentResponse(agent=agent_message(agent), agent_key=key)

    async def GetAgent(
        self, request: agents_pb2.GetAgentRequest, context: Context
    ) -> agents_pb2.Agent:
        return agent_message(await agents.get_agent(self._deps, request.agent_id))

    async def ListAgents(
        self, request: agents_pb2.ListAgentsRequest, context: Context
    ) -> agents_pb2.ListAgentsResponse:
        page, token = await agents.list_agents(self._deps, request.page_size, request.page_token)
        return agents_pb2.ListAgentsResponse(
            agents=[agent_message(a) for a in page], next_page_token=token
        )

    async def UpdateAgent(
        self, request: agents_pb2.UpdateAgentRequest, context: Context
    ) -> agents_pb2.Agent:
        updated = await agents.update_agent(self._deps, request.agent.agent_id, _change(request))
        return agent_message(updated)

    async def DeleteAgent(
        self, request: agents_pb2.DeleteAgentRequest, context: Context
    ) -> empty_pb2.Empty:
        await agents.delete_agent(self._deps, request.agent_id)
        return empty_pb2.Empty()

    async def RotateAgentKey(
        self, request: agents_pb2.RotateAgentKeyRequest, context: Context
    ) -> agents_pb2.RotateAgentKeyResponse:
        agent, key, until = await agents.rotate_agent_key(
            self._deps, request.agent_id, request.grace_period_seconds
        )
        return agents_pb2.RotateAgentKeyResponse(
            agent=agent_message(agent), agent_key=key, previous_key_expire_time=_timestamp(until)
        )

    async def AuthenticateAgent(
        self, request: agents_pb2.AuthenticateAgentRequest, context: Context
    ) -> agents_pb2.AuthenticateAgentResponse:
        agent, expires_at = await agents.authenticate_agent(self._deps, request.agent_key)
        answer = agents_pb2.AuthenticateAgentResponse(agent_id=agent.agent_id)
        if expires_at is not None:
            answer.key_expire_time.CopyFrom(_timestamp(expires_at))
        return answer


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, deps: AccessDeps, changes: AgentChanges) -> None:
        self._deps = deps
        self._changes = changes

    async def CheckScopes(
        self, request: policy_pb2.CheckScopesRequest, context: Context
    ) -> policy_pb2.CheckScopesResponse:
        decision = check_scopes(request.requested_scopes, request.allowed_scopes)
        return policy_pb2.CheckScopesResponse(
            allowed=decision.allowed, denied_scopes=decision.denied
        )

    async def AuthorizeAccess(
        self, request: policy_pb2.AccessRequest, context: Context
    ) -> policy_pb2.AccessDecision:
        action = _ACTIONS.get(request.action)
        if action is None:
            raise ValidationFailed("action is required", field="action")
        grant = await authorize(
            self._deps,
            _caller(request.caller),
            action,
            _target(request),
            agent_id=request.agent_id,
            scopes=tuple(request.scopes),
            user_token=request.user_context_token
            if request.HasField("user_context_token")
            else None,
        )
        reach = grant.reach.workspaces
        response = policy_pb2.AccessDecision(
            scopes=grant.scopes,
            workspaces=sorted(reach or ()),
            any_workspace=reach is None,
        )
        if grant.reach.tenant_id is not None:
            response.tenant_id = grant.reach.tenant_id
        if grant.agent is not None:
            response.agent_id = grant.agent.agent_id
            response.sessions_valid_after.CopyFrom(_timestamp(grant.agent.sessions_valid_after))
        if grant.user is not None:
            user = grant.user
            response.user.CopyFrom(
                policy_pb2.UserContext(
                    user_id=user.user_id,
                    tenant_id=user.tenant_id,
                    clearance_level=user.clearance_level,
                    permissions=sorted(user.permissions),
                    token_expires_at=int(user.expires_at or 0),
                    workspaces=sorted(user.workspaces),
                )
            )
        return response

    async def CheckSessionStanding(
        self, request: policy_pb2.SessionStandingRequest, context: Context
    ) -> policy_pb2.SessionStanding:
        valid = await session_standing(
            self._deps, request.agent_id, request.issued_at.ToDatetime(tzinfo=UTC)
        )
        return policy_pb2.SessionStanding(valid=valid)

    async def WatchAgentChanges(
        self, request: policy_pb2.WatchAgentChangesRequest, context: Context
    ) -> AsyncIterator[policy_pb2.AgentChangeNotice]:
        first = True
        async for agent_id in self._changes.watch():
            yield policy_pb2.AgentChangeNotice(ready=first, agent_id=agent_id or "")
            first = False
