"""Thin servicers: proto in, use case, proto out. Errors are mapped by the interceptor."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import empty_pb2, timestamp_pb2
from grpc.aio import ServicerContext as Context
from nexus.policy.v1 import agents_pb2, agents_pb2_grpc, policy_pb2, policy_pb2_grpc
from nexus_common import ValidationFailed

from ..domain.agents import Agent
from ..domain.scopes import check_scopes
from ..service_layer import agents
from ..service_layer.decisions import UserDirectory, evaluate_session

__all__ = ["AgentRegistryServicer", "PolicyServicer"]

_UPDATABLE = ("description", "allowed_scopes", "enabled")


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def agent_message(agent: Agent) -> agents_pb2.Agent:
    return agents_pb2.Agent(
        agent_id=agent.agent_id,
        description=agent.description,
        allowed_scopes=agent.allowed_scopes,
        enabled=agent.enabled,
        key_id=agent.key_id,
        create_time=_timestamp(agent.created_at),
        update_time=_timestamp(agent.updated_at),
    )


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
    return agents.AgentChange(
        description=given.description if "description" in paths else None,
        allowed_scopes=tuple(given.allowed_scopes) if "allowed_scopes" in paths else None,
        enabled=(given.enabled if given.HasField("enabled") else True)
        if "enabled" in paths
        else None,
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
        agent = await agents.authenticate_agent(self._deps, request.agent_key)
        return agents_pb2.AuthenticateAgentResponse(agent_id=agent.agent_id)


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, deps: agents.RegistryDeps, users: UserDirectory | None) -> None:
        self._deps = deps
        self._users = users

    async def CheckScopes(
        self, request: policy_pb2.CheckScopesRequest, context: Context
    ) -> policy_pb2.CheckScopesResponse:
        decision = check_scopes(request.requested_scopes, request.allowed_scopes)
        return policy_pb2.CheckScopesResponse(
            allowed=decision.allowed, denied_scopes=decision.denied
        )

    async def EvaluateSession(
        self, request: policy_pb2.EvaluateSessionRequest, context: Context
    ) -> policy_pb2.SessionDecision:
        decision = await evaluate_session(
            self._deps,
            self._users,
            request.agent_id,
            list(request.scopes),
            request.user_context_token if request.HasField("user_context_token") else None,
        )
        response = policy_pb2.SessionDecision(agent_id=decision.agent_id, scopes=decision.scopes)
        if decision.user is not None:
            user = decision.user
            response.user.CopyFrom(
                policy_pb2.UserContext(
                    user_id=user.user_id,
                    tenant_id=user.tenant_id,
                    clearance_level=user.clearance_level,
                    permissions=sorted(user.permissions),
                    token_expires_at=int(user.expires_at or 0),
                )
            )
        return response
