"""Wiring: build the broker from settings. Nothing is built at import time."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
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
from nexus_common import (
    ChangeFeed,
    InternalClient,
    Migrations,
    NexusServer,
    PageTokens,
    agent_changes,
    build_server,
    create_engine,
    internal_authenticator,
    outbound_client,
)
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from .adapters import orm
from .adapters.credential_check import CredentialChecker
from .adapters.grant_rows import GrantRows
from .adapters.group_commit import GroupCommit
from .adapters.oidc_discovery import DiscoveryClient
from .adapters.oidc_id_token import IdTokenVerifier
from .adapters.policy_client import PolicyClient
from .adapters.rfc6749 import TokenEndpoint
from .adapters.row_cache import RowCache
from .domain.return_urls import ReturnUrlPolicy
from .domain.state import StateSigner
from .entrypoints.connection_servicer import ConnectionServicer
from .entrypoints.servicers import AuditLogServicer, ProviderRegistryServicer
from .entrypoints.session_servicer import SessionServicer
from .service_layer.audit import write_audit_batch, write_grants
from .service_layer.connections import ConnectionDeps
from .service_layer.leases import RefreshLeases
from .service_layer.providers import RegistryDeps
from .service_layer.sessions import SessionDeps
from .service_layer.signing import SessionSigner
from .service_layer.tokens import Refresher
from .service_layer.unit_of_work import BrokerUnitOfWork
from .settings import BrokerSettings

__all__ = ["Broker", "BrokerCore", "create_broker", "create_core", "migrate_database"]

MIGRATIONS = Migrations(
    Path(__file__).parent / "migrations", "alembic_version_broker", tuple(orm.metadata.tables)
)
SERVICE_NAMES = (
    providers_pb2.DESCRIPTOR.services_by_name["ProviderRegistryService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditLogService"].full_name,
    connections_pb2.DESCRIPTOR.services_by_name["ConnectionService"].full_name,
    sessions_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name,
)


def migrate_database(url: str) -> None:
    MIGRATIONS.upgrade(url)


@dataclass
class BrokerCore:
    """What the use cases need: storage, outbound HTTP and settings-derived rules."""

    deps: RegistryDeps
    connections: ConnectionDeps
    refresher: Refresher
    sessions: SessionDeps
    engine: AsyncEngine
    http: httpx.AsyncClient
    policy: InternalClient
    # The policy's agent changes, which keep the remembered access grants right.
    feed: ChangeFeed

    async def start_caches(self, *, wait_seconds: float = 0.0) -> None:
        """Follow the policy's agent changes (grants are remembered only while
        the feed is up) and hear other replicas' writes before serving, so the
        first requests cache."""
        await self.feed.start(wait_seconds=wait_seconds)
        await self.connections.cache.start()

    async def close(self) -> None:
        # Queued rows first: their callers are waiting, and need the engine.
        await self.connections.audit.close()
        await self.sessions.grants.close()
        await self.refresher.close()
        await self.connections.cache.close()
        await self.feed.close()
        await self.policy.close()
        await self.http.aclose()
        await self.engine.dispose()


@dataclass
class Broker:
    server: NexusServer
    core: BrokerCore

    async def close(self) -> None:
        await self.core.close()


def _now() -> datetime:
    return datetime.now(UTC)


def create_core(settings: BrokerSettings) -> BrokerCore:
    engine = create_engine(settings.database_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    grant_rows = GrantRows(engine)
    http = outbound_client(settings.outbound, httpx.Timeout(settings.provider_timeout_seconds))
    cache = RowCache(
        settings.database_url,
        settings.cache_max_age_seconds,
        heartbeat_seconds=settings.listener_heartbeat_seconds,
    )
    deps = RegistryDeps(
        uow=lambda: BrokerUnitOfWork(sessions, settings.keyring, cache),
        discovery=DiscoveryClient(http, settings.discovery_timeout_seconds),
        outbound=settings.outbound,
        clock=_now,
        discovery_retry_seconds=settings.discovery_retry_seconds,
        discovery_max_age_seconds=settings.discovery_max_age_seconds,
        pages=PageTokens(settings.internal_token.encode(), "broker"),
        confirm_by_another_admin=settings.endpoint_confirmation_by_another_admin,
    )
    connections = ConnectionDeps(
        registry=deps,
        tokens=TokenEndpoint(http),
        id_tokens=IdTokenVerifier(http, min_refetch_seconds=settings.jwks_min_refetch_seconds),
        checker=CredentialChecker(http),
        signer=StateSigner(settings.state_key),
        return_urls=ReturnUrlPolicy(settings.return_url_allowlist),
        public_base_url=settings.public_base_url,
        pending_ttl=timedelta(seconds=settings.connection_ttl_seconds),
        confirmation_always=settings.confirmation_always,
        clock_skew=timedelta(seconds=settings.clock_skew_seconds),
        refresh=settings.refresh,
        random=random.random,
        leases=RefreshLeases(
            uow=deps.uow,
            clock=_now,
            seconds=settings.refresh_lease_seconds,
            call_seconds=settings.provider_timeout_seconds,
        ),
        cache=cache,
        audit=GroupCommit(
            lambda events: write_audit_batch(events, grant_rows),
            settings.audit_batch_max,
            name="audit",
        ),
    )
    refresher = Refresher(connections)
    policy = InternalClient(
        "policy",
        settings.policy_target,
        settings.internal_token,
        settings.policy_timeout_seconds,
        tls=settings.tls,
        keepalive_seconds=settings.peer_silence_seconds,
    )
    decisions = PolicyClient(policy, cache_max_age_seconds=settings.cache_max_age_seconds)
    feed = ChangeFeed(
        "policy",
        "nexus_agents",
        agent_changes(policy, settings.internal_token),
        decisions.changed,
        on_gap=decisions.suspend,
        on_ready=decisions.resume,
        idle_seconds=settings.peer_silence_seconds,
    )
    session_deps = SessionDeps(
        connections=connections,
        refresher=refresher,
        policy=decisions,
        broader_tokens_by_default=settings.broader_session_tokens_by_default,
        signer=SessionSigner(
            deps.uow,
            rotation=timedelta(seconds=settings.signing_key_rotation_seconds),
            longest_session=timedelta(seconds=settings.sessions.max_ttl_seconds),
            jwks_cache=timedelta(seconds=settings.jwks_cache_seconds),
        ),
        limits=settings.sessions,
        issuer=settings.session_issuer,
        grants=GroupCommit(
            lambda grants: write_grants([s for s, _ in grants], [e for _, e in grants], grant_rows),
            settings.audit_batch_max,
            name="session",
        ),
    )
    return BrokerCore(deps, connections, refresher, session_deps, engine, http, policy, feed)


def create_broker(settings: BrokerSettings) -> Broker:
    core = create_core(settings)
    registry = ProviderRegistryServicer(core.deps)
    audit_log = AuditLogServicer(core.deps)
    connection_service = ConnectionServicer(core.connections, core.refresher, core.sessions.policy)
    session_service = SessionServicer(core.sessions)
    server = build_server(
        address=settings.listen,
        registrars=[
            lambda s: providers_pb2_grpc.add_ProviderRegistryServiceServicer_to_server(registry, s),
            lambda s: audit_pb2_grpc.add_AuditLogServiceServicer_to_server(audit_log, s),
            lambda s: connections_pb2_grpc.add_ConnectionServiceServicer_to_server(
                connection_service, s
            ),
            lambda s: sessions_pb2_grpc.add_SessionServiceServicer_to_server(session_service, s),
        ],
        service_names=SERVICE_NAMES,
        authenticate=internal_authenticator(
            settings.internal_tokens, settings.caller_proofs, mutual_tls=settings.tls is not None
        ),
        credentials=settings.tls.server_credentials() if settings.tls else None,
        reflection_enabled=False,
        health_listen=settings.health_listen,
        keepalive_seconds=settings.peer_silence_seconds,
    )
    return Broker(server, core)
