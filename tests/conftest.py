"""Fixtures shared by the integration and end-to-end tests: real PostgreSQL,
SQLite files, the real OIDC server from npm, and Nexus services on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from nexus_common import generate_key_spec

from tests.support.app_server import AppServer
from tests.support.backend_auth_server import BackendAuthServer, start_backend_auth_server
from tests.support.oidc_server import OidcServer, start_oidc_server
from tests.support.postgres import fresh_database, postgres_url

ADMIN_KEY = "nxa_test_admin_key_0123456789abcdef"
INTERNAL_TOKEN = "internal-test-token-0123456789"
STATE_KEY = "state-signing-key-for-tests-0123456789abcdef"
LOOPBACK_NETWORKS = "127.0.0.0/8,::1/128"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'broker.db'}"
        return
    url, drop = fresh_database(postgres_url())
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database, for tests about replicas (which share a server)."""
    url, drop = fresh_database(postgres_url())
    try:
        yield url
    finally:
        drop()


@pytest.fixture(scope="session")
def oidc() -> Iterator[OidcServer]:
    with start_oidc_server() as server:
        yield server


@pytest.fixture(scope="session")
def backend() -> Iterator[BackendAuthServer]:
    """The customer's backend behind BACKEND_AUTH_URL, shared by the session."""
    with start_backend_auth_server() as server:
        yield server


@pytest.fixture(scope="session")
def keyring_spec() -> str:
    return generate_key_spec(1)


def service_env(database_url: str, keyring_spec: str, **extra: str) -> dict[str, str]:
    return {
        "NEXUS_BROKER_DATABASE_URL": database_url,
        "NEXUS_POLICY_DATABASE_URL": database_url,
        "NEXUS_KEYRING": keyring_spec,
        "NEXUS_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "NEXUS_ADMIN_API_KEYS": f"tests:{ADMIN_KEY}",
        "NEXUS_DISCOVERY_TIMEOUT_SECONDS": "3",
        "NEXUS_DISCOVERY_RETRY_SECONDS": "0",
        "NEXUS_BROKER_LISTEN": "127.0.0.1:0",
        "NEXUS_GATEWAY_LISTEN": "127.0.0.1:0",
        "NEXUS_POLICY_LISTEN": "127.0.0.1:0",
        "NEXUS_GATEWAY_HTTP_LISTEN": "127.0.0.1:0",
        "NEXUS_STATE_KEY": STATE_KEY,
        "NEXUS_REFRESH_LOOP": "false",
        "NEXUS_REFRESH_MIN_BACKOFF_SECONDS": "0.2",
        "NEXUS_REFRESH_MAX_BACKOFF_SECONDS": "0.5",
        # As `make run`; tests of production's defaults set "production".
        "NEXUS_ENVIRONMENT": "development",
        # The services talk over loopback; the tests of mutual TLS give certificates.
        "NEXUS_ALLOW_PLAINTEXT": "true",
        # The OAuth servers, apps and backends of the tests listen on loopback; production
        # allows no address that is not public.
        "NEXUS_OUTBOUND_ALLOWED_NETWORKS": LOOPBACK_NETWORKS,
        # Tests that force refreshes back to back; the rate limit's own tests set it.
        "NEXUS_FORCED_REFRESH_INTERVAL_SECONDS": "0",
        **extra,
    }


@dataclass
class Services:
    """Broker, gateway and policy running in this process on real sockets."""

    gateway: grpc.aio.Channel
    broker_port: int
    policy_port: int
    browser_url: str
    env: dict[str, str]
    broker: Any


@pytest.fixture
def service_overrides() -> dict[str, str]:
    """Settings a test module adds to its services' (override the fixture)."""
    return {}


@pytest.fixture
def per_service_overrides() -> dict[str, dict[str, str]]:
    """Settings for one service alone, by service name (its certificate, say)."""
    return {}


@pytest.fixture
async def services(
    database_url: str,
    keyring_spec: str,
    backend: BackendAuthServer,
    service_overrides: dict[str, str],
    per_service_overrides: dict[str, dict[str, str]],
) -> AsyncIterator[Services]:
    from nexus_broker.server import create_broker
    from nexus_broker.server import migrate_database as migrate_broker
    from nexus_broker.settings import BrokerSettings
    from nexus_gateway.server import create_gateway
    from nexus_gateway.settings import GatewaySettings
    from nexus_policy.server import create_policy
    from nexus_policy.server import migrate_database as migrate_policy
    from nexus_policy.settings import PolicySettings

    from tools.devstack import free_port

    browser_port, broker_port = free_port(), free_port()
    browser_url = f"http://127.0.0.1:{browser_port}"
    env = service_env(
        database_url,
        keyring_spec,
        NEXUS_GATEWAY_HTTP_LISTEN=f"127.0.0.1:{browser_port}",
        NEXUS_PUBLIC_BASE_URL=browser_url,
        BACKEND_AUTH_URL=backend.url,
        # The policy service hands its audit events to the broker.
        NEXUS_BROKER_LISTEN=f"127.0.0.1:{broker_port}",
        NEXUS_BROKER_TARGET=f"127.0.0.1:{broker_port}",
        **service_overrides,
    )
    migrate_broker(database_url)
    migrate_policy(database_url)
    own = per_service_overrides
    policy = create_policy(PolicySettings.from_env({**env, **own.get("policy", {})}))
    await policy.start_caches()
    await policy.server.start()
    env["NEXUS_POLICY_TARGET"] = f"127.0.0.1:{policy.server.port}"
    broker = create_broker(BrokerSettings.from_env({**env, **own.get("broker", {})}))
    await broker.core.start_caches(wait_seconds=5)
    await broker.server.start()
    forwarding = asyncio.create_task(policy.forwarder.run(0.1))
    gateway = create_gateway(GatewaySettings.from_env({**env, **own.get("gateway", {})}))
    await gateway.start_caches(wait_seconds=5)
    await gateway.server.start()
    browser = asyncio.create_task(gateway.browser.serve())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.server.port}")
    try:
        yield Services(channel, broker.server.port, policy.server.port, browser_url, env, broker)
    finally:
        await channel.close()
        gateway.browser.stop()
        await browser
        await gateway.server.stop(0)
        await gateway.close()
        forwarding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await forwarding
        await broker.server.stop(0)
        await broker.close()
        await policy.server.stop(0)
        await policy.close()


@pytest.fixture(scope="session")
def app() -> Iterator[AppServer]:
    with AppServer() as server:
        yield server
