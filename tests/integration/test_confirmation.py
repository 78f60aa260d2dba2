"""NEXUS_CONNECTION_CONFIRMATION=required (production's default) over gRPC
through the gateway, with the real OAuth server from npm, on SQLite and
PostgreSQL: every connection waits for ConfirmConnection, and a request that
asks not to is refused unless the deployment opted out by name."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import pytest
from nexus.broker.v1 import connections_pb2
from nexus.gateway.v1 import gateway_pb2

from tests.conftest import Services
from tests.integration.helpers import ADMIN, expect_error
from tests.integration.test_connections import check, connections, register_idp, start, token
from tests.support.app_server import AppServer
from tests.support.oidc_server import OidcServer, start_oidc_server

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def service_overrides() -> dict[str, str]:
    return {"NEXUS_CONNECTION_CONFIRMATION": "required"}


@pytest.fixture
def idp() -> Iterator[OidcServer]:
    with start_oidc_server() as server:
        yield server


async def confirm(services: Services, connection_id: str, code: str) -> connections_pb2.Connection:
    return await connections(services).ConfirmConnection(
        gateway_pb2.ConfirmConnectionRequest(
            connection_id=connection_id,
            confirm=connections_pb2.ConfirmConnectionRequest(confirmation=code),
        ),
        metadata=ADMIN,
    )


async def test_the_setting_makes_every_connection_wait_for_confirmation(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_idp(services, idp)
    started = await start(services, f"{app.url}/done", scopes=("openid", "contacts:read"))
    assert started.confirmation_required
    async with httpx.AsyncClient(follow_redirects=True, timeout=30) as browser:
        landing = await browser.get(started.auth_url)
    outcome = parse_qs(urlsplit(str(landing.url)).query)
    assert outcome["status"] == ["success"]
    assert outcome["connection_id"] == [started.connection_id]
    code = outcome["confirmation"][0]
    assert (await check(services, started.connection_id)).status == "unconfirmed"
    await expect_error(
        token(services, started.connection_id),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CONNECTION_NOT_ACTIVE",
    )
    await expect_error(
        confirm(services, started.connection_id, code[::-1]), INVALID, "CONFIRMATION_INVALID"
    )
    confirmed = await confirm(services, started.connection_id, code)
    assert confirmed.status == "active" and confirmed.connection_id == started.connection_id
    assert (await token(services, started.connection_id)).credentials["access_token"]
    await expect_error(
        confirm(services, started.connection_id, code), INVALID, "CONFIRMATION_INVALID"
    )


async def test_confirming_needs_an_admin_key(services: Services) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await connections(services).ConfirmConnection(
            gateway_pb2.ConfirmConnectionRequest(
                connection_id="x", confirm=connections_pb2.ConfirmConnectionRequest()
            )
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _unconfirmed_request(return_url: str) -> gateway_pb2.RequestConnectionRequest:
    return gateway_pb2.RequestConnectionRequest(
        connection=connections_pb2.RequestConnectionRequest(
            workspace_id="user_sarah",
            provider_name="mock-idp",
            return_url=return_url,
            require_confirmation=False,
        )
    )


@pytest.mark.parametrize(
    "service_overrides",
    [
        {"NEXUS_ENVIRONMENT": "production"},
        {"NEXUS_CONNECTION_CONFIRMATION": "required"},
    ],
)
async def test_asking_for_no_confirmation_is_refused_where_it_is_required(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    """The request that would leave the unopened-link gap open is refused, and
    nothing is written: the workspace holds no connection afterwards."""
    await register_idp(services, idp)
    await expect_error(
        connections(services).RequestConnection(
            _unconfirmed_request(f"{app.url}/done"), metadata=ADMIN
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CONFIRMATION_REQUIRED",
    )
    listed = await connections(services).ListConnections(
        connections_pb2.ListConnectionsRequest(workspace_id="user_sarah"), metadata=ADMIN
    )
    assert list(listed.connections) == []
    # Unset, the deployment's rule applies: the connection waits for confirmation.
    started = await start(services, f"{app.url}/done")
    assert started.confirmation_required


@pytest.mark.parametrize(
    "service_overrides",
    [{"NEXUS_ENVIRONMENT": "production", "NEXUS_CONNECTION_CONFIRMATION": "optional"}],
)
async def test_a_production_deployment_that_opts_out_by_name_may_skip_confirmation(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_idp(services, idp)
    started = await connections(services).RequestConnection(
        _unconfirmed_request(f"{app.url}/done"), metadata=ADMIN
    )
    assert not started.confirmation_required
    async with httpx.AsyncClient(follow_redirects=True, timeout=30) as browser:
        landing = await browser.get(started.auth_url)
    assert "confirmation" not in parse_qs(urlsplit(str(landing.url)).query)
    assert (await check(services, started.connection_id)).status == "active"
