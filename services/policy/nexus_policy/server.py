"""Wiring: build the policy service from settings. Nothing is built at import time."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from nexus.policy.v1 import agents_pb2, agents_pb2_grpc, policy_pb2, policy_pb2_grpc
from nexus_common import (
    ChangeListener,
    InternalClient,
    Migrations,
    NexusServer,
    PageTokens,
    build_server,
    create_engine,
    internal_authenticator,
    listens,
    outbound_client,
)
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from .adapters import orm
from .adapters.backend_auth import BackendAuthClient, LocalVerification
from .adapters.broker_sessions import BrokerSessions
from .adapters.repository import PolicyUnitOfWork
from .entrypoints.servicers import AgentRegistryServicer, PolicyServicer
from .service_layer.access import AccessDeps
from .service_layer.agent_cache import AgentCache
from .service_layer.agent_changes import AgentChanges
from .service_layer.agents import RegistryDeps
from .service_layer.audit_forwarder import AuditForwarder
from .settings import BackendAuthSettings, PolicySettings

__all__ = ["AGENTS_CHANNEL", "Policy", "create_policy", "migrate_database"]

MIGRATIONS = Migrations(
    Path(__file__).parent / "migrations", "alembic_version_policy", tuple(orm.metadata.tables)
)
# What the agents' triggers NOTIFY (migration 0004), with the agent's id.
AGENTS_CHANNEL = "nexus_agents"
SERVICE_NAMES = (
    policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,
    agents_pb2.DESCRIPTOR.services_by_name["AgentRegistryService"].full_name,
)


def migrate_database(url: str) -> None:
    MIGRATIONS.upgrade(url)


@dataclass
class Policy:
    server: NexusServer
    forwarder: AuditForwarder
    engine: AsyncEngine
    http: httpx.AsyncClient
    broker: InternalClient
    changes: AgentChanges
    # None on SQLite: one process, whose own writes are every change.
    listener: ChangeListener | None = field(default=None)

    async def start_caches(self, *, wait_seconds: float = 5.0) -> None:
        """Hear other replicas' changes; until this runs (and while the
        listener is down) a replica on PostgreSQL caches no agent and accepts
        no watch."""
        if self.listener is not None:
            await self.listener.start(wait_seconds=wait_seconds)

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close()
        await self.broker.close()
        await self.http.aclose()
        await self.engine.dispose()


def _now() -> datetime:
    return datetime.now(UTC)


def _users(
    http: httpx.AsyncClient, settings: BackendAuthSettings | None
) -> BackendAuthClient | None:
    if settings is None:
        return None
    local = (
        LocalVerification(settings.token_issuer, settings.token_audience, settings.token_jwks_uri)
        if settings.token_jwks_uri
        else None
    )
    return BackendAuthClient(
        http,
        settings.url,
        timeout_seconds=settings.timeout_seconds,
        cache_seconds=settings.cache_seconds,
        local=local,
        jwks_min_refetch_seconds=settings.jwks_min_refetch_seconds,
        user_id_is_workspace=settings.user_id_is_workspace,
    )


def create_policy(settings: PolicySettings) -> Policy:
    engine = create_engine(settings.database_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    http = outbound_client(settings.outbound, httpx.Timeout(settings.outbound.deadline_seconds))
    broker = InternalClient(
        "broker",
        settings.broker_target,
        settings.internal_token,
        5.0,
        tls=settings.tls,
        keepalive_seconds=settings.peer_silence_seconds,
    )

    def uow() -> PolicyUnitOfWork:
        return PolicyUnitOfWork(sessions)

    shared = listens(settings.database_url)
    # Heard by the gateway and the broker every listener heartbeat while nothing
    # changes: a stream silent for three is judged dead (peer_silence_seconds).
    changes = AgentChanges(
        listening=not shared, heartbeat_seconds=settings.listener_heartbeat_seconds
    )
    agents = AgentCache(
        uow, settings.cache_max_age_seconds, hears_others=shared, changed=changes.changed
    )
    deps = RegistryDeps(
        uow=uow,
        clock=_now,
        agents=agents,
        pages=PageTokens(settings.internal_token.encode(), "policy"),
        sessions=BrokerSessions(broker),
    )
    registry = AgentRegistryServicer(deps)
    decisions = PolicyServicer(
        AccessDeps(agents, _users(http, settings.backend_auth), settings.allow_unbound_agents),
        changes,
    )
    server = build_server(
        address=settings.listen,
        registrars=[
            lambda s: policy_pb2_grpc.add_PolicyServiceServicer_to_server(decisions, s),
            lambda s: agents_pb2_grpc.add_AgentRegistryServiceServicer_to_server(registry, s),
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

    def gap() -> None:
        agents.suspend()
        changes.lost()

    def ready() -> None:
        agents.resume()
        changes.heard()

    listener = (
        ChangeListener(
            settings.database_url,
            [AGENTS_CHANNEL],
            lambda channel, agent_id: agents.invalidate(agent_id),
            on_gap=gap,
            on_ready=ready,
            heartbeat_seconds=settings.listener_heartbeat_seconds,
        )
        if shared
        else None
    )
    return Policy(server, AuditForwarder(deps.uow, broker), engine, http, broker, changes, listener)
