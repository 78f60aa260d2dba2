"""An authorization code is redeemed once, however often the bound browser
replays its callback at the same time: the attempt is claimed before the code
goes to the token endpoint (RFC 6749 §4.1.2, §10.5). The provider is the
certified ``oidc-provider``, which counts every token request (refused ones
too) and, as §4.1.2 asks, revokes the grant when a code comes back a second
time; over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from nexus.broker.v1 import connections_pb2, providers_pb2
from nexus.gateway.v1 import gateway_pb2

from tests.conftest import Services
from tests.integration.helpers import ADMIN
from tests.integration.test_connections import check, connections, open_auth_url, register, token
from tests.support.app_server import AppServer
from tests.support.certified_oidc import (
    CertifiedOidc,
    certified_stats,
    introspect,
    start_certified_oidc,
)

REPLAYS = 12
SCOPES = ("openid", "crm:contacts:read")


@pytest.fixture
def certified(services: Services) -> Iterator[CertifiedOidc]:
    with start_certified_oidc([f"{services.browser_url}/v1/callback/salesforce"]) as server:
        yield server


async def callback_url(services: Services, browser: httpx.AsyncClient, auth_url: str) -> str:
    """Where the provider sends the browser back, with the code, not yet opened."""
    location = await open_auth_url(browser, auth_url)
    while not location.startswith(f"{services.browser_url}/v1/callback/"):
        reply = await browser.get(location, follow_redirects=False)
        assert reply.next_request is not None, reply.text
        location = str(reply.next_request.url)
    return location


async def test_concurrent_replays_of_a_callback_redeem_its_code_once(
    services: Services, certified: CertifiedOidc, app: AppServer
) -> None:
    await register(
        services,
        providers_pb2.Provider(
            name="salesforce",
            auth_type="oauth2",
            client_id=certified.client_id,
            client_secret=certified.client_secret,
            issuer=certified.issuer,
            enable_discovery=True,
            scopes=list(SCOPES),
        ),
    )
    started = await connections(services).RequestConnection(
        gateway_pb2.RequestConnectionRequest(
            connection=connections_pb2.RequestConnectionRequest(
                workspace_id="user_sarah",
                provider_name="salesforce",
                scopes=SCOPES,
                return_url=f"{app.url}/done",
            )
        ),
        metadata=ADMIN,
    )
    async with httpx.AsyncClient(timeout=30) as browser:
        url = await callback_url(services, browser, started.auth_url)
        replies = await asyncio.gather(
            *(browser.get(url, follow_redirects=False) for _ in range(REPLAYS))
        )

    assert certified_stats(certified)["token_calls"] == {"authorization_code": 1}
    outcomes = sorted(reply.status_code for reply in replies)
    assert outcomes == [302] + [400] * (REPLAYS - 1), outcomes
    (finished,) = [reply for reply in replies if reply.status_code == 302]
    assert "status=success" in finished.headers["location"]
    for refused in replies:
        if refused.status_code == 400:
            assert 'data-reason="STATE_INVALID"' in refused.text
    assert (await check(services, started.connection_id)).status == "active"
    # The provider never saw the code twice, so it revoked nothing.
    access_token = (await token(services, started.connection_id)).credentials["access_token"]
    assert introspect(certified, access_token)["active"] is True
