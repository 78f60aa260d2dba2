"""Proto ⇄ domain conversion for the broker's RPCs. No rules live here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from nexus.broker.v1 import audit_pb2, connections_pb2, providers_pb2
from nexus_common import AuditEvent

from ..domain.connections import Connection
from ..domain.credentials import TokenPayload
from ..domain.discovery import Discovery
from ..domain.params import BASIC_AUTH_FIELDS
from ..domain.providers import AuthType, Provider, ProviderSpec

__all__ = [
    "audit_event_to_proto",
    "connection_to_proto",
    "provider_summary",
    "provider_to_proto",
    "spec_from_proto",
    "timestamp",
    "token_payload_to_proto",
]


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def spec_from_proto(message: providers_pb2.Provider) -> ProviderSpec:
    return ProviderSpec(
        name=message.name,
        auth_type=message.auth_type,
        description=message.description,
        category=message.category,
        client_id=message.client_id,
        client_secret=message.client_secret if message.HasField("client_secret") else None,
        auth_url=message.auth_url,
        token_url=message.token_url,
        issuer=message.issuer,
        enable_discovery=message.enable_discovery,
        scopes=tuple(message.scopes),
        api_base_url=message.api_base_url,
        user_info_endpoint=message.user_info_endpoint,
        jwks_uri=message.jwks_uri,
        revocation_url=message.revocation_url,
        params=json_format.MessageToDict(message.params),
    )


def _discovery_to_proto(discovery: Discovery) -> providers_pb2.Discovery:
    return providers_pb2.Discovery(
        status=discovery.status,
        reason=discovery.reason,
        fetch_time=timestamp(discovery.fetched_at),
        authorization_endpoint=discovery.authorization_endpoint,
        token_endpoint=discovery.token_endpoint,
        userinfo_endpoint=discovery.userinfo_endpoint,
        jwks_uri=discovery.jwks_uri,
        revocation_endpoint=discovery.revocation_endpoint,
        scopes_supported=discovery.scopes_supported,
        token_endpoint_auth_methods_supported=discovery.token_endpoint_auth_methods_supported,
    )


def provider_to_proto(provider: Provider) -> providers_pb2.Provider:
    spec = provider.spec
    return providers_pb2.Provider(
        id=provider.id,
        name=spec.name,
        description=spec.description,
        category=spec.category,
        auth_type=spec.auth_type,
        client_id=spec.client_id,
        has_client_secret=provider.has_client_secret,
        auth_url=provider.auth_url,
        token_url=provider.token_url,
        issuer=spec.issuer,
        enable_discovery=spec.enable_discovery,
        scopes=spec.scopes,
        api_base_url=spec.api_base_url,
        user_info_endpoint=provider.user_info_endpoint,
        params=_struct(spec.params),
        jwks_uri=provider.jwks_uri,
        revocation_url=provider.revocation_url,
        discovery=_discovery_to_proto(provider.discovery),
        state=provider.state,
        create_time=timestamp(provider.created_at),
        update_time=timestamp(provider.updated_at),
        delete_time=timestamp(provider.deleted_at),
        endpoints_pending=provider.endpoints_pending,
    )


def provider_summary(provider: Provider) -> providers_pb2.ProviderSummary:
    if provider.spec.auth_type == AuthType.BASIC_AUTH:
        fields: tuple[str, ...] = BASIC_AUTH_FIELDS
    else:
        fields = tuple(f.name for f in provider.params.credential_schema)
    return providers_pb2.ProviderSummary(
        id=provider.id,
        name=provider.name,
        description=provider.spec.description,
        category=provider.spec.category,
        scopes=provider.spec.scopes,
        credential_fields=fields,
    )


def audit_event_to_proto(event: AuditEvent) -> audit_pb2.AuditEvent:
    return audit_pb2.AuditEvent(
        id=event.id,
        event_time=timestamp(event.event_time),
        actor=event.actor,
        action=event.action,
        resource=event.resource,
        details=_struct(event.details),
    )


def audit_event_from_proto(message: audit_pb2.AuditEvent) -> AuditEvent:
    return AuditEvent(
        actor=message.actor,
        action=message.action,
        resource=message.resource,
        event_time=message.event_time.ToDatetime(tzinfo=UTC),
        details=json_format.MessageToDict(message.details),
        id=message.id,
    )


def connection_to_proto(connection: Connection, provider: Provider) -> connections_pb2.Connection:
    return connections_pb2.Connection(
        connection_id=connection.id,
        workspace_id=connection.workspace_id,
        provider_id=connection.provider_id,
        provider_name=provider.name,
        status=connection.status,
        scopes=connection.scopes,
        create_time=timestamp(connection.created_at),
        last_refreshed_at=timestamp(connection.last_refreshed_at),
        next_refresh_at=timestamp(connection.next_refresh_at),
        last_error=connection.last_error,
        expire_time=timestamp(connection.pending_until),
        tenant_id=connection.tenant_id,
    )


def token_payload_to_proto(payload: TokenPayload) -> connections_pb2.TokenPayload:
    strategy, credentials, expires_at = payload
    message = connections_pb2.TokenPayload(
        strategy=_struct(strategy), credentials=_struct(credentials)
    )
    if expires_at is not None:
        message.expires_at = float(max(0, int(expires_at.timestamp())))
    return message
