"""Wiring: build the broker from settings. Nothing is built at import time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from nexus.broker.v1 import audit_pb2, audit_pb2_grpc, providers_pb2, providers_pb2_grpc
from nexus_common import NexusServer, build_server, create_engine, internal_authenticator, migrate
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from .adapters.oidc_discovery import DiscoveryClient
from .entrypoints.servicers import AuditLogServicer, ProviderRegistryServicer
from .service_layer.providers import RegistryDeps
from .service_layer.unit_of_work import BrokerUnitOfWork
from .settings import BrokerSettings

__all__ = ["Broker", "BrokerCore", "create_broker", "create_core", "migrate_database"]

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAMES = (
    providers_pb2.DESCRIPTOR.services_by_name["ProviderRegistryService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditLogService"].full_name,
)


def migrate_database(url: str) -> None:
    migrate(url, MIGRATIONS, version_table="alembic_version_broker")


@dataclass
class BrokerCore:
    """What the use cases need: storage, outbound HTTP and settings-derived rules."""

    deps: RegistryDeps
    engine: AsyncEngine
    http: httpx.AsyncClient

    async def close(self) -> None:
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
    http = httpx.AsyncClient(timeout=httpx.Timeout(settings.discovery_timeout_seconds))
    deps = RegistryDeps(
        uow=lambda: BrokerUnitOfWork(sessions, settings.keyring),
        discovery=DiscoveryClient(http),
        clock=_now,
        discovery_retry_seconds=settings.discovery_retry_seconds,
        discovery_max_age_seconds=settings.discovery_max_age_seconds,
    )
    return BrokerCore(deps, engine, http)


def create_broker(settings: BrokerSettings) -> Broker:
    core = create_core(settings)
    registry = ProviderRegistryServicer(core.deps)
    audit_log = AuditLogServicer(core.deps)
    server = build_server(
        address=settings.listen,
        registrars=[
            lambda s: providers_pb2_grpc.add_ProviderRegistryServiceServicer_to_server(registry, s),
            lambda s: audit_pb2_grpc.add_AuditLogServiceServicer_to_server(audit_log, s),
        ],
        service_names=SERVICE_NAMES,
        authenticate=internal_authenticator(settings.internal_tokens),
    )
    return Broker(server, core)
