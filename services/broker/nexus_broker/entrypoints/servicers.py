"""The broker's gRPC servicers: translate, call one use case, translate back."""

from __future__ import annotations

from grpc.aio import ServicerContext as Context
from nexus.broker.v1 import audit_pb2, audit_pb2_grpc, providers_pb2, providers_pb2_grpc

from ..service_layer import audit, providers
from ..service_layer.providers import RegistryDeps
from .convert import (
    audit_event_from_proto,
    audit_event_to_proto,
    provider_summary,
    provider_to_proto,
    spec_from_proto,
)

__all__ = ["AuditLogServicer", "ProviderRegistryServicer"]


class ProviderRegistryServicer(providers_pb2_grpc.ProviderRegistryServiceServicer):
    def __init__(self, deps: RegistryDeps) -> None:
        self._deps = deps

    async def CreateProvider(
        self, request: providers_pb2.CreateProviderRequest, context: Context
    ) -> providers_pb2.Provider:
        provider = await providers.create_provider(spec_from_proto(request.provider), self._deps)
        return provider_to_proto(provider)

    async def GetProvider(
        self, request: providers_pb2.GetProviderRequest, context: Context
    ) -> providers_pb2.Provider:
        return provider_to_proto(await providers.get_provider(request.id, self._deps))

    async def ListProviders(
        self, request: providers_pb2.ListProvidersRequest, context: Context
    ) -> providers_pb2.ListProvidersResponse:
        page = await providers.list_providers(
            category=request.category,
            auth_type=request.auth_type,
            show_deleted=request.show_deleted,
            requested_size=request.page_size,
            page_token=request.page_token,
            deps=self._deps,
        )
        return providers_pb2.ListProvidersResponse(
            providers=[provider_to_proto(p) for p in page.providers],
            next_page_token=page.next_page_token,
        )

    async def UpdateProvider(
        self, request: providers_pb2.UpdateProviderRequest, context: Context
    ) -> providers_pb2.Provider:
        provider = await providers.update_provider(
            request.provider.id,
            spec_from_proto(request.provider),
            request.update_mask.paths,
            self._deps,
        )
        return provider_to_proto(provider)

    async def DeleteProvider(
        self, request: providers_pb2.DeleteProviderRequest, context: Context
    ) -> providers_pb2.Provider:
        return provider_to_proto(await providers.delete_provider(request.id, self._deps))

    async def ConfirmProviderEndpoints(
        self, request: providers_pb2.ConfirmProviderEndpointsRequest, context: Context
    ) -> providers_pb2.Provider:
        return provider_to_proto(await providers.confirm_endpoints(request.id, self._deps))

    async def ListProviderMetadata(
        self, request: providers_pb2.ListProviderMetadataRequest, context: Context
    ) -> providers_pb2.ListProviderMetadataResponse:
        grouped = await providers.providers_by_auth_type(self._deps)
        return providers_pb2.ListProviderMetadataResponse(
            auth_types=[
                providers_pb2.AuthTypeProviders(
                    auth_type=auth_type, providers=[provider_summary(p) for p in members]
                )
                for auth_type, members in grouped.items()
            ]
        )


class AuditLogServicer(audit_pb2_grpc.AuditLogServiceServicer):
    def __init__(self, deps: RegistryDeps) -> None:
        self._deps = deps

    async def ListAuditEvents(
        self, request: audit_pb2.ListAuditEventsRequest, context: Context
    ) -> audit_pb2.ListAuditEventsResponse:
        page = await audit.list_audit_events(
            resource=request.resource,
            requested_size=request.page_size,
            page_token=request.page_token,
            uow=self._deps.uow,
            pages=self._deps.pages,
        )
        return audit_pb2.ListAuditEventsResponse(
            audit_events=[audit_event_to_proto(e) for e in page.events],
            next_page_token=page.next_page_token,
        )

    async def RecordAuditEvents(
        self, request: audit_pb2.RecordAuditEventsRequest, context: Context
    ) -> audit_pb2.RecordAuditEventsResponse:
        events = [audit_event_from_proto(e) for e in request.audit_events]
        recorded = await audit.record_audit_events(events, self._deps.uow)
        return audit_pb2.RecordAuditEventsResponse(recorded=recorded)
