"""NEXUS_CONNECTION_CONFIRMATION=required over gRPC through the gateway, with
the real OAuth server from npm, on SQLite and PostgreSQL: every connection
waits for ConfirmConnection, whatever its request says."""

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
