"""Prometheus metrics, scraped over HTTP as Prometheus would: per-RPC counts and
latencies in every service, session decisions, token refreshes, the user
backend and the audit outbox. Counters are process-wide, so each test compares
a scrape before with one after."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import pytest
from nexus.broker.v1 import providers_pb2
from nexus.gateway.v1 import gateway_pb2_grpc
from nexus_common import ConfigError, Env, serve_metrics

from tests.conftest import Services
from tests.integration.helpers import ADMIN, expect_error
from tests.integration.test_connections import connect, force_refresh
from tests.integration.test_sessions import (
    agent_session,
    bearer,
    gliding,
    register_agent,
    register_internal_ops,
    sessions,
)
from tests.support.app_server import AppServer
from tests.support.backend_auth_server import BackendAuthServer, start_backend_auth_server
from tests.support.metrics import sample_sum
from tests.support.oidc_server import OidcServer, behave


@pytest.fixture(scope="module")
def metrics_url() -> Iterator[str]:
    endpoint = serve_metrics("127.0.0.1:0")
    try:
        yield f"http://127.0.0.1:{endpoint.port}/metrics"
    finally:
        endpoint.stop()


@pytest.fixture
def backend() -> Iterator[BackendAuthServer]:
    with start_backend_auth_server() as server:
        yield server


class Scrape:
    def __init__(self, text: str) -> None:
        self.text = text

    def value(self, name: str, **labels: str) -> float:
        return sample_sum(self.text, name, **labels)


class Scraper:
    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self._client = client
        self._url = url

    async def __call__(self) -> Scrape:
        response = await self._client.get(self._url)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        return Scrape(response.text)


@pytest.fixture
async def scrape(metrics_url: str) -> AsyncIterator[Scraper]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield Scraper(client, metrics_url)


def grown(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


async def test_every_rpc_is_counted_by_service_method_and_status_code(
    services: Services, scrape: Scraper
) -> None:
    providers = gateway_pb2_grpc.ProviderServiceStub(services.gateway)
    public = {"grpc_service": "nexus.gateway.v1.ProviderService", "grpc_method": "ListProviders"}
    internal = {
        "grpc_service": "nexus.broker.v1.ProviderRegistryService",
        "grpc_method": "ListProviders",
    }
    before = await scrape()

    await providers.ListProviders(providers_pb2.ListProvidersRequest(), metadata=ADMIN)
    await expect_error(
        providers.ListProviders(providers_pb2.ListProvidersRequest()),
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )

    after = await scrape()
    handled = "grpc_server_handled_total"
    assert grown(before, after, handled, grpc_code="OK", **public) == 1
    assert grown(before, after, handled, grpc_code="UNAUTHENTICATED", **public) == 1
    assert grown(before, after, "grpc_server_handling_seconds_count", **public) == 2
    # Only the authenticated call reached the broker.
    assert grown(before, after, handled, grpc_code="OK", **internal) == 1
    assert grown(before, after, handled, grpc_code="UNAUTHENTICATED", **internal) == 0


async def test_session_decisions_and_backend_calls_are_counted(
    services: Services, backend: BackendAuthServer, scrape: Scraper
) -> None:
    await register_internal_ops(services)
    key = await register_agent(services, "ops-agent", ["acme:gliding"])
    sarah = backend.issue_token("sarah", permissions=["acme:gliding"])
    before = await scrape()

    await sessions(services).CreateOboSession(gliding(sarah), metadata=bearer(key))
    await sessions(services).CreateOboSession(gliding(sarah), metadata=bearer(key))  # cached
    bob = backend.issue_token("bob", permissions=[])
    forged = backend.forge_token("sarah", permissions=["acme:gliding"])
    for token in (bob, forged):
        with pytest.raises(grpc.aio.AioRpcError):
            await sessions(services).CreateOboSession(gliding(token), metadata=bearer(key))
    with pytest.raises(grpc.aio.AioRpcError):
        await sessions(services).CreateAgentSession(
            agent_session(agent_id="ops-agent", provider="internal-ops", scopes=["acme:flaring"]),
            metadata=bearer(key),
        )
    backend.stop()
    await expect_error(
        sessions(services).CreateOboSession(
            gliding(backend.issue_token("ana", permissions=["acme:gliding"])),
            metadata=bearer(key),
        ),
        grpc.StatusCode.UNAVAILABLE,
        "BACKEND_AUTH_UNAVAILABLE",
    )

    after = await scrape()
    decided = "nexus_sessions_total"
    assert grown(before, after, decided, kind="obo", outcome="granted") == 2
    for reason in ("USER_PERMISSION_MISSING", "USER_TOKEN_INVALID", "BACKEND_AUTH_UNAVAILABLE"):
        assert grown(before, after, decided, kind="obo", outcome="denied", reason=reason) == 1
    assert grown(before, after, decided, kind="agent", reason="AGENT_SCOPE_NOT_ALLOWED") == 1
    asked = "nexus_backend_auth_requests_total"
    # sarah once (then cached) and bob; the forged token; the stopped backend.
    assert grown(before, after, asked, outcome="accepted") == 2
    assert grown(before, after, asked, outcome="rejected") == 1
    assert grown(before, after, asked, outcome="unavailable") == 1
    assert grown(before, after, "nexus_backend_auth_request_seconds_count") == 4
    assert grown(before, after, "nexus_backend_auth_cache_hits_total") == 1
    assert sarah not in after.text and key not in after.text


async def test_token_refreshes_are_counted_by_outcome(
    services: Services, idp: OidcServer, app: AppServer, scrape: Scraper
) -> None:
    connection_id = await connect(services, idp, app)
    before = await scrape()

    await force_refresh(services, connection_id)
    behave(idp, token="server_error")
    with pytest.raises(grpc.aio.AioRpcError):
        await force_refresh(services, connection_id)
    behave(idp, token="ok")
    # The backoff (at most 0.5 s here) holds for forced refreshes too.
    await asyncio.sleep(0.6)
    await force_refresh(services, connection_id)
    behave(idp, token="invalid_grant")
    with pytest.raises(grpc.aio.AioRpcError):
        await force_refresh(services, connection_id)

    after = await scrape()
    refreshes = "nexus_token_refreshes_total"
    assert grown(before, after, refreshes, outcome="succeeded") == 2
    assert grown(before, after, refreshes, outcome="retrying") == 1
    assert grown(before, after, refreshes, outcome="reauth_required") == 1


async def test_the_audit_outbox_reports_what_it_forwarded_and_how_old_its_oldest_is(
    services: Services, scrape: Scraper
) -> None:
    before = await scrape()
    await register_agent(services, "audited-agent", ["crm:contacts:read"])
    forwarded = "nexus_audit_events_forwarded_total"
    # The policy service forwards in the background, every 0.1 s here.
    deadline = asyncio.get_running_loop().time() + 30
    after = await scrape()
    while grown(before, after, forwarded) < 1 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        after = await scrape()
    assert grown(before, after, forwarded) >= 1
    assert after.value("nexus_audit_outbox_oldest_event_age_seconds") == 0


@pytest.mark.parametrize("listen", ["9090", ":9090", "0.0.0.0:http", "0.0.0.0:70000"])
def test_a_malformed_metrics_address_is_a_configuration_error(listen: str) -> None:
    with pytest.raises(ConfigError, match="NEXUS_METRICS_LISTEN must be host:port"):
        Env({"NEXUS_METRICS_LISTEN": listen}).address("NEXUS_METRICS_LISTEN", "")
