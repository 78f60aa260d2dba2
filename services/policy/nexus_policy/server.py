"""Wiring: build the policy service from settings. Nothing is built at import time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from nexus.policy.v1 import agents_pb2, agents_pb2_grpc, policy_pb2, policy_pb2_grpc
from nexus_common import (
    InternalClient,
    Migrations,
    NexusServer,
    PageTokens,
    build_server,
    create_engine,
    internal_authenticator,
    outbound_client,
)
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from .adapters.backend_auth import BackendAuthClient, LocalVerification
from .adapters.broker_sessions import BrokerSessions
from .adapters.repository import PolicyUnitOfWork
from .entrypoints.servicers import AgentRegistryServicer, PolicyServicer
from .service_layer.access import AccessDeps
from .service_layer.agent_cache import AgentCache
from .service_layer.agents import RegistryDeps
from .service_layer.audit_forwarder import AuditForwarder
from .settings import BackendAuthSettings, PolicySettings

__all__ = ["Policy", "create_policy", "migrate_database"]

MIGRATIONS = Migrations(Path(__file__).parent / "migrations", "alembic_version_policy")
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

    async def close(self) -> None:
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
    )


def create_policy(settings: PolicySettings) -> Policy:
    engine = create_engine(settings.database_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    http = outbound_client(settings.outbound, httpx.Timeout(settings.outbound.deadline_seconds))
    broker = InternalClient("broker", settings.broker_target, settings.internal_token, 5.0)

    def uow() -> PolicyUnitOfWork:
        return PolicyUnitOfWork(sessions)

    agents = AgentCache(uow, settings.agent_cache_seconds)
    deps = RegistryDeps(
        uow=uow,
        clock=_now,
        agents=agents,
        pages=PageTokens(settings.internal_token.encode(), "policy"),
        sessions=BrokerSessions(broker),
    )
    registry = AgentRegistryServicer(deps)
    decisions = PolicyServicer(
        AccessDeps(agents, _users(http, settings.backend_auth), settings.allow_unbound_agents)
    )
    server = build_server(
        address=settings.listen,
        registrars=[
            lambda s: policy_pb2_grpc.add_PolicyServiceServicer_to_server(decisions, s),
            lambda s: agents_pb2_grpc.add_AgentRegistryServiceServicer_to_server(registry, s),
        ],
        service_names=SERVICE_NAMES,
        authenticate=internal_authenticator(settings.internal_tokens),
    )
    return Policy(server, AuditForwarder(deps.uow, broker), engine, http, broker)
