"""Moving a provider's token endpoints sends no token there until an admin confirms the move.

An admin key can never read a refresh token, but one that could move
``token_url`` and then trigger refreshes would send every connection's refresh
token to a host of its choosing: with a made-up ``client_secret`` (which the
"secret follows its endpoints" rule accepts) or, for a public PKCE client,
with nothing at all. So a move of a provider whose connections hold tokens
waits (``endpoints_pending``) for a second call, ``ConfirmProviderEndpoints``;
both steps are audited, and so is a discovery re-fetch that moves an endpoint.

Both hosts are real OAuth servers on loopback that count every refresh token
they are sent (gRPC through the gateway; SQLite and PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import json_format
from nexus.broker.v1 import audit_pb2, providers_pb2
from nexus.gateway.v1 import gateway_pb2_grpc

from tests.conftest import ADMIN_KEY, Services
from tests.integration.helpers import ADMIN, expect_error, peek, rotating
from tests.integration.test_connections import (
    browse,
    force_refresh,
    register,
    run_refresh_loop_once,
    start,
    token,
)
from tests.integration.test_provider_registry import update
from tests.support.app_server import AppServer
from tests.support.rotating_provider import RotatingProvider

PAUSED = grpc.StatusCode.FAILED_PRECONDITION
REASON = "PROVIDER_ENDPOINTS_PENDING"


REVIEWER = (("x-api-key", "reviewer-key-0123456789abcdef0123456789abcdef"),)


@pytest.fixture
def service_overrides() -> dict[str, str]:
    return {
        # Every use of a discovering provider re-fetches its document.
        "NEXUS_DISCOVERY_MAX_AGE_SECONDS": "0",
        # Production's default: the admin key that moved endpoints cannot confirm them.
        "NEXUS_ENDPOINT_CONFIRMATION": "another_admin",
        "NEXUS_ADMIN_API_KEYS": f"tests:{ADMIN_KEY},reviewer:{REVIEWER[0][1]}",
    }


@pytest.fixture
def home() -> Iterator[RotatingProvider]:
    with RotatingProvider() as server:
        yield server


@pytest.fixture
def elsewhere() -> Iterator[RotatingProvider]:
    """The host the token endpoint is moved to."""
    with RotatingProvider() as server:
        yield server


def _provider(home: RotatingProvider, *, public: bool) -> providers_pb2.Provider:
    provider = rotating(home, "" if public else "s3cret")
    if public:
        provider.params.update({"token_endpoint_auth_method": "none"})
    return provider


async def _connect(services: Services, app: AppServer) -> str:
    started = await start(services, f"{app.url}/done", provider_name="rotating")
    landing = await browse(started.auth_url)
    assert parse_qs(urlsplit(str(landing.url)).query)["status"] == ["success"], landing.text
    return started.connection_id


def _registry(services: Services) -> gateway_pb2_grpc.ProviderServiceStub:
    return gateway_pb2_grpc.ProviderServiceStub(services.gateway)


async def _confirm(
    services: Services, provider_id: str, admin: tuple[tuple[str, str], ...] = REVIEWER
) -> providers_pb2.Provider:
    return await _registry(services).ConfirmProviderEndpoints(
        providers_pb2.ConfirmProviderEndpointsRequest(id=provider_id), metadata=admin
    )


async def _get(services: Services, provider_id: str) -> providers_pb2.Provider:
    return await _registry(services).GetProvider(
        providers_pb2.GetProviderRequest(id=provider_id), metadata=ADMIN
    )


async def _events(services: Services, provider_id: str) -> list[dict[str, Any]]:
    reply = await gateway_pb2_grpc.AuditServiceStub(services.gateway).ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(resource=f"providers/{provider_id}"), metadata=ADMIN
    )
    return [
        {"action": e.action, **json_format.MessageToDict(e.details)} for e in reply.audit_events
    ]


def _make_due(services: Services, connection_id: str) -> None:
    """As if the refresh loop's time for the connection had come."""
    engine = peek(services.env["NEXUS_BROKER_DATABASE_URL"])
    try:
        with engine.begin() as db:
            db.execute(
                sa.text("UPDATE connections SET next_refresh_at = created_at WHERE id = :id"),
                {"id": connection_id},
            )
    finally:
        engine.dispose()


async def _refresh_reaches(services: Services, connection_id: str) -> None:
    """A forced refresh that gets to the provider, whatever it answers."""
    try:
        await force_refresh(services, connection_id)
    except grpc.aio.AioRpcError as exc:
        # The new host does not know the token: the connection needs the user again.
        assert exc.code() in (PAUSED, grpc.StatusCode.UNAVAILABLE), exc.details()


@pytest.mark.parametrize("public", [False, True], ids=["made-up-secret", "public-client"])
async def test_a_moved_token_url_gets_no_refresh_token_until_confirmed(
    services: Services,
    app: AppServer,
    home: RotatingProvider,
    elsewhere: RotatingProvider,
    public: bool,
) -> None:
    created = await register(services, _provider(home, public=public))
    connection_id = await _connect(services, app)
    _, refresh_token = home.issued[-1]
    patch = providers_pb2.Provider(token_url=f"{elsewhere.url}/token")
    paths = ["token_url"]
    if not public:
        patch.client_secret = "made-up"
        paths.append("client_secret")
    moved = await update(services, created.id, patch, *paths)
    assert moved.endpoints_pending and moved.token_url == f"{elsewhere.url}/token"

    message = await expect_error(force_refresh(services, connection_id), PAUSED, REASON)
    assert "confirmEndpoints" in message, message
    _make_due(services, connection_id)
    await run_refresh_loop_once(services)
    # A token still valid keeps working meanwhile.
    assert (await token(services, connection_id)).credentials["access_token"]
    # No new connection sends its code (and PKCE verifier) there either.
    await expect_error(start(services, f"{app.url}/done", provider_name="rotating"), PAUSED, REASON)
    assert elsewhere.refresh_calls == 0 and home.refresh_calls == 0

    # The key that moved them cannot confirm them: a second admin must.
    await expect_error(
        _confirm(services, created.id, ADMIN),
        grpc.StatusCode.PERMISSION_DENIED,
        "CONFIRMATION_NEEDS_ANOTHER_ADMIN",
    )
    assert (await _get(services, created.id)).endpoints_pending
    confirmed = await _confirm(services, created.id)
    assert not confirmed.endpoints_pending
    await _refresh_reaches(services, connection_id)
    assert elsewhere.uses[refresh_token] == 1

    actions = await _events(services, created.id)
    (change,) = (e for e in actions if e["action"] == "provider.endpoint_change")
    assert change["source"] == "update" and change["endpoints_pending"] is True
    assert change["client_secret_given"] is not public
    (confirm,) = (e for e in actions if e["action"] == "provider.endpoints_confirm")
    assert confirm["endpoints"]["token_url"] == f"{elsewhere.url}/token"
    assert confirm["moved_by"] == "admin:tests"


async def test_a_discovery_refetch_that_moves_the_token_endpoint_waits_too(
    services: Services, app: AppServer, home: RotatingProvider, elsewhere: RotatingProvider
) -> None:
    document: dict[str, object] = {
        "issuer": home.url,
        "authorization_endpoint": f"{home.url}/authorize",
        "token_endpoint": f"{home.url}/token",
        "jwks_uri": f"{home.url}/jwks",
        "response_types_supported": ["code"],
    }
    home.discovery = document
    created = await register(
        services,
        providers_pb2.Provider(
            name="rotating",
            auth_type="oauth2",
            client_id="nexus-client",
            client_secret="s3cret",
            issuer=home.url,
            enable_discovery=True,
            scopes=["contacts:read"],
        ),
    )
    connection_id = await _connect(services, app)
    _, refresh_token = home.issued[-1]
    home.discovery = {**document, "token_endpoint": f"{elsewhere.url}/token"}

    refetched = await _get(services, created.id)
    assert refetched.endpoints_pending and refetched.token_url == f"{elsewhere.url}/token"
    await expect_error(force_refresh(services, connection_id), PAUSED, REASON)
    assert elsewhere.refresh_calls == 0
    (change,) = (
        e for e in await _events(services, created.id) if e["action"] == "provider.endpoint_change"
    )
    assert change["source"] == "discovery"
    assert change["endpoints"]["token_url"] == {
        "old": f"{home.url}/token",
        "new": f"{elsewhere.url}/token",
    }

    # Nobody moved them by hand: any admin may confirm.
    await _confirm(services, created.id, ADMIN)
    await _refresh_reaches(services, connection_id)
    assert elsewhere.uses[refresh_token] == 1


async def test_a_connection_started_before_the_move_sends_no_code_to_the_new_host(
    services: Services, app: AppServer, home: RotatingProvider, elsewhere: RotatingProvider
) -> None:
    """A public client's code with its PKCE verifier would redeem at the real
    provider: whoever holds both holds the user's grant."""
    created = await register(services, _provider(home, public=True))
    started = await start(services, f"{app.url}/done", provider_name="rotating")
    moved = await update(
        services,
        created.id,
        providers_pb2.Provider(token_url=f"{elsewhere.url}/token"),
        "token_url",
    )
    assert moved.endpoints_pending
    landing = await browse(started.auth_url)
    query = parse_qs(urlsplit(str(landing.url)).query)
    assert query["status"] == ["error"], landing.url
    assert query["error"] == ["provider_endpoints_pending"]
    assert elsewhere.code_exchanges == 0 and home.code_exchanges == 0


async def test_without_connections_holding_tokens_a_move_applies_at_once(
    services: Services, home: RotatingProvider, elsewhere: RotatingProvider
) -> None:
    created = await register(services, _provider(home, public=True))
    moved = await update(
        services,
        created.id,
        providers_pb2.Provider(token_url=f"{elsewhere.url}/token"),
        "token_url",
    )
    assert not moved.endpoints_pending
    # Confirming when nothing waits changes nothing.
    assert await _confirm(services, created.id) == moved
