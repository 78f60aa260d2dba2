"""The public API. The gateway authenticates callers (in an interceptor) and
passes each call to the service that owns the resource; it keeps no state."""

from __future__ import annotations

from google.api import httpbody_pb2
from google.protobuf import empty_pb2
from grpc.aio import ServicerContext as Context
from nexus.broker.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    connections_pb2,
    connections_pb2_grpc,
    providers_pb2,
    providers_pb2_grpc,
    sessions_pb2,
    sessions_pb2_grpc,
)
from nexus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from nexus.policy.v1 import agents_pb2, agents_pb2_grpc
from nexus_common import InternalClient, ValidationFailed

from .rest_body import request_body

__all__ = [
    "AgentServicer",
    "AuditServicer",
    "ConnectionServicer",
    "ProviderServicer",
    "SessionServicer",
]


class ProviderServicer(gateway_pb2_grpc.ProviderServiceServicer):
    def __init__(self, broker: InternalClient) -> None:
        self._broker = broker
        self._stub = providers_pb2_grpc.ProviderRegistryServiceStub(broker.channel)

    async def CreateProvider(
        self, request: gateway_pb2.CreateProviderRequest, context: Context
    ) -> providers_pb2.Provider:
        provider = request_body(request, request.provider)
        return await self._broker.call(
            self._stub.CreateProvider, providers_pb2.CreateProviderRequest(provider=provider)
        )

    async def ListProviders(
        self, request: providers_pb2.ListProvidersRequest, context: Context
    ) -> providers_pb2.ListProvidersResponse:
        return await self._broker.call(self._stub.ListProviders, request)

    async def ListProviderMetadata(
        self, request: providers_pb2.ListProviderMetadataRequest, context: Context
    ) -> providers_pb2.ListProviderMetadataResponse:
        return await self._broker.call(self._stub.ListProviderMetadata, request)

    async def GetProvider(
        self, request: providers_pb2.GetProviderRequest, context: Context
    ) -> providers_pb2.Provider:
        return await self._broker.call(self._stub.GetProvider, request)

    async def UpdateProvider(
        self, request: gateway_pb2.UpdateProviderRequest, context: Context
    ) -> providers_pb2.Provider:
        provider = request_body(request, request.provider)
        provider.id = request.id
        forwarded = providers_pb2.UpdateProviderRequest(
            provider=provider, update_mask=request.update_mask
        )
        return await self._broker.call(self._stub.UpdateProvider, forwarded)

    async def DeleteProvider(
        self, request: providers_pb2.DeleteProviderRequest, context: Context
    ) -> providers_pb2.Provider:
        return await self._broker.call(self._stub.DeleteProvider, request)

    async def ConfirmProviderEndpoints(
        self, request: providers_pb2.ConfirmProviderEndpointsRequest, context: Context
    ) -> providers_pb2.Provider:
        return await self._broker.call(self._stub.ConfirmProviderEndpoints, request)


class AuditServicer(gateway_pb2_grpc.AuditServiceServicer):
    def __init__(self, broker: InternalClient) -> None:
        self._broker = broker
        self._stub = audit_pb2_grpc.AuditLogServiceStub(broker.channel)

    async def ListAuditEvents(
        self, request: audit_pb2.ListAuditEventsRequest, context: Context
    ) -> audit_pb2.ListAuditEventsResponse:
        return await self._broker.call(self._stub.ListAuditEvents, request)


class ConnectionServicer(gateway_pb2_grpc.ConnectionServiceServicer):
    def __init__(self, broker: InternalClient) -> None:
        self._broker = broker
        self._stub = connections_pb2_grpc.ConnectionServiceStub(broker.channel)

    async def RequestConnection(
        self, request: gateway_pb2.RequestConnectionRequest, context: Context
    ) -> connections_pb2.RequestConnectionResponse:
        started = request_body(request, request.connection)
        return await self._broker.call(self._stub.RequestConnection, started)

    async def CheckConnection(
        self, request: connections_pb2.CheckConnectionRequest, context: Context
    ) -> connections_pb2.Connection:
        return await self._broker.call(self._stub.CheckConnection, request)

    async def GetToken(
        self, request: connections_pb2.GetTokenRequest, context: Context
    ) -> connections_pb2.TokenPayload:
        return await self._broker.call(self._stub.GetToken, request)

    async def RefreshConnection(
        self, request: connections_pb2.RefreshConnectionRequest, context: Context
    ) -> connections_pb2.Connection:
        return await self._broker.call(self._stub.RefreshConnection, request)

    async def ListConnections(
        self, request: connections_pb2.ListConnectionsRequest, context: Context
    ) -> connections_pb2.ListConnectionsResponse:
        return await self._broker.call(self._stub.ListConnections, request)

    async def RevokeConnection(
        self, request: connections_pb2.RevokeConnectionRequest, context: Context
    ) -> connections_pb2.Connection:
        return await self._broker.call(self._stub.RevokeConnection, request)

    async def DeleteConnection(
        self, request: connections_pb2.DeleteConnectionRequest, context: Context
    ) -> empty_pb2.Empty:
        return await self._broker.call(self._stub.DeleteConnection, request)

    async def ConfirmConnection(
        self, request: gateway_pb2.ConfirmConnectionRequest, context: Context
    ) -> connections_pb2.Connection:
        confirm = request_body(request, request.confirm)
        if confirm.connection_id and confirm.connection_id != request.connection_id:
            raise ValidationFailed(
                "the body names a different connection than the path", field="connection_id"
            )
        confirm.connection_id = request.connection_id
        return await self._broker.call(self._stub.ConfirmConnection, confirm)

    async def CaptureCredentials(
        self, request: gateway_pb2.CaptureCredentialsRequest, context: Context
    ) -> connections_pb2.CaptureCredentialsResponse:
        capture = request_body(request, request.capture)
        return await self._broker.call(self._stub.CaptureCredentials, capture)


class AgentServicer(gateway_pb2_grpc.AgentServiceServicer):
    def __init__(self, policy: InternalClient) -> None:
        self._policy = policy
        self._stub = agents_pb2_grpc.AgentRegistryServiceStub(policy.channel)

    async def CreateAgent(
        self, request: gateway_pb2.CreateAgentRequest, context: Context
    ) -> agents_pb2.CreateAgentResponse:
        agent = request_body(request, request.agent)
        return await self._policy.call(
            self._stub.CreateAgent, agents_pb2.CreateAgentRequest(agent=agent)
        )

    async def ListAgents(
        self, request: agents_pb2.ListAgentsRequest, context: Context
    ) -> agents_pb2.ListAgentsResponse:
        return await self._policy.call(self._stub.ListAgents, request)

    async def GetAgent(
        self, request: agents_pb2.GetAgentRequest, context: Context
    ) -> agents_pb2.Agent:
        return await self._policy.call(self._stub.GetAgent, request)

    async def UpdateAgent(
        self, request: gateway_pb2.UpdateAgentRequest, context: Context
    ) -> agents_pb2.Agent:
        agent = request_body(request, request.agent)
        if agent.agent_id and agent.agent_id != request.agent_id:
            raise ValidationFailed(
                "agent_id is immutable: the body names a different agent than the path",
                field="agent_id",
            )
        agent.agent_id = request.agent_id
        forwarded = agents_pb2.UpdateAgentRequest(agent=agent, update_mask=request.update_mask)
        return await self._policy.call(self._stub.UpdateAgent, forwarded)

    async def DeleteAgent(
        self, request: agents_pb2.DeleteAgentRequest, context: Context
    ) -> empty_pb2.Empty:
        return await self._policy.call(self._stub.DeleteAgent, request)

    async def RotateAgentKey(
        self, request: gateway_pb2.RotateAgentKeyRequest, context: Context
    ) -> agents_pb2.RotateAgentKeyResponse:
        rotation = request_body(request, request.rotation, optional=True)
        if rotation.agent_id and rotation.agent_id != request.agent_id:
            raise ValidationFailed(
                "the body names a different agent than the path", field="agent_id"
            )
        rotation.agent_id = request.agent_id
        return await self._policy.call(self._stub.RotateAgentKey, rotation)


class SessionServicer(gateway_pb2_grpc.SessionServiceServicer):
    def __init__(self, broker: InternalClient) -> None:
        self._broker = broker
        self._stub = sessions_pb2_grpc.SessionServiceStub(broker.channel)

    async def CreateAgentSession(
        self, request: gateway_pb2.CreateAgentSessionRequest, context: Context
    ) -> sessions_pb2.AgentSession:
        session = request_body(request, request.session)
        return await self._broker.call(self._stub.CreateAgentSession, session)

    async def CreateOboSession(
        self, request: gateway_pb2.CreateOboSessionRequest, context: Context
    ) -> sessions_pb2.AgentSession:
        session = request_body(request, request.session)
        return await self._broker.call(self._stub.CreateOboSession, session)

    async def CloseAgentSession(
        self, request: sessions_pb2.CloseAgentSessionRequest, context: Context
    ) -> empty_pb2.Empty:
        return await self._broker.call(self._stub.CloseAgentSession, request)

    async def IntrospectSession(
        self, request: gateway_pb2.IntrospectSessionRequest, context: Context
    ) -> sessions_pb2.IntrospectSessionResponse:
        introspection = request_body(request, request.introspection)
        return await self._broker.call(self._stub.IntrospectSession, introspection)

    async def GetJwks(
        self, request: sessions_pb2.GetJwksRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        jwks, headers = await self._broker.call_with_headers(self._stub.GetJwks, request)
        # The broker knows how long its key set stays right; Envoy passes this on.
        if "cache-control" in headers:
            await context.send_initial_metadata((("cache-control", headers["cache-control"]),))
        return jwks
