"""The public API. The gateway authenticates callers (in an interceptor) and
passes each call to the service that owns the resource; it keeps no state."""

from __future__ import annotations

from google.protobuf import empty_pb2
from grpc.aio import ServicerContext as Context
from nexus.broker.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    connections_pb2,
    connections_pb2_grpc,
    providers_pb2,
    providers_pb2_grpc,
)
from nexus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from nexus_common import InternalClient

from .rest_body import resolve_body

__all__ = ["AuditServicer", "ConnectionServicer", "ProviderServicer"]


class ProviderServicer(gateway_pb2_grpc.ProviderServiceServicer):
    def __init__(self, broker: InternalClient) -> None:
        self._broker = broker
        self._stub = providers_pb2_grpc.ProviderRegistryServiceStub(broker.channel)

    async def CreateProvider(
        self, request: gateway_pb2.CreateProviderRequest, context: Context
    ) -> providers_pb2.Provider:
        provider = resolve_body(
            request.provider,
            request.HasField("provider"),
            request.http_body,
            request.HasField("http_body"),
        )
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
        provider = resolve_body(
            request.provider,
            request.HasField("provider"),
            request.http_body,
            request.HasField("http_body"),
        )
        provider.id = request.id
        forwarded = providers_pb2.UpdateProviderRequest(
            provider=provider, update_mask=request.update_mask
        )
        return await self._broker.call(self._stub.UpdateProvider, forwarded)

    async def DeleteProvider(
        self, request: providers_pb2.DeleteProviderRequest, context: Context
    ) -> providers_pb2.Provider:
        return await self._broker.call(self._stub.DeleteProvider, request)


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
        started = resolve_body(
            request.connection,
            request.HasField("connection"),
            request.http_body,
            request.HasField("http_body"),
        )
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

    async def CaptureCredentials(
        self, request: gateway_pb2.CaptureCredentialsRequest, context: Context
    ) -> connections_pb2.CaptureCredentialsResponse:
        capture = resolve_body(
            request.capture,
            request.HasField("capture"),
            request.http_body,
            request.HasField("http_body"),
        )
        return await self._broker.call(self._stub.CaptureCredentials, capture)
