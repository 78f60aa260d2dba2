"""Connections over gRPC through the gateway, with the real OAuth server from npm,
the browser endpoints over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import pytest
from google.protobuf import json_format, struct_pb2
from nexus.broker.v1 import audit_pb2, connections_pb2, providers_pb2
from nexus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from nexus_broker.domain.state import StateSigner

from tests.conftest import STATE_KEY, Services
from tests.integration.helpers import ADMIN, expect_error
from tests.support.app_server import GOOD_API_KEY, GOOD_BASIC, AppServer
from tests.support.oidc_server import OidcServer, behave, stats

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def connections(services: Services) -> gateway_pb2_grpc.ConnectionServiceStub:
    return gateway_pb2_grpc.ConnectionServiceStub(services.gateway)


async def register(services: Services, provider: providers_pb2.Provider) -> providers_pb2.Provider:
    return await gateway_pb2_grpc.ProviderServiceStub(services.gateway).CreateProvider(
        gateway_pb2.CreateProviderRequest(provider=provider), metadata=ADMIN
    )


async def register_idp(
    services: Services, idp: OidcServer, **params: Any
) -> providers_pb2.Provider:
    provider = providers_pb2.Provider(
        name="mock-idp",
        auth_type="oauth2",
        client_id="nexus-client",
        client_secret="s3cret",
        issuer=idp.issuer,
        enable_discovery=True,
        scopes=["openid", "contacts:read", "contacts:write"],
    )
    provider.params.update(params)
    return await register(services, provider)


async def start(
    services: Services,
    return_url: str,
    *,
    provider_name: str = "mock-idp",
    scopes: tuple[str, ...] = (),
) -> connections_pb2.RequestConnectionResponse:
    return await connections(services).RequestConnection(
        gateway_pb2.RequestConnectionRequest(
            connection=connections_pb2.RequestConnectionRequest(
                workspace_id="user_sarah",
                provider_name=provider_name,
                scopes=scopes,
                return_url=return_url,
            )
        ),
        metadata=ADMIN,
    )


async def browse(url: str) -> httpx.Response:
    """Follow redirects the way a browser would, to the final page."""
    async with httpx.AsyncClient(follow_redirects=True, timeout=30) as browser:
        return await browser.get(url)


async def connect(services: Services, idp: OidcServer, app: AppServer, **params: Any) -> str:
    await register_idp(services, idp, **params)
    started = await start(
        services, f"{app.url}/done?from=tests", scopes=("openid", "contacts:read")
    )
    landing = await browse(started.auth_url)
    assert landing.status_code == 200, landing.text
    query = parse_qs(urlsplit(str(landing.url)).query)
    assert query == {
        "from": ["tests"],
        "status": ["success"],
        "connection_id": [started.connection_id],
    }
    return started.connection_id


async def open_auth_url(browser: httpx.AsyncClient, auth_url: str) -> str:
    """Open auth_url as a browser does (it gets the binding cookie); where it leads."""
    reply = await browser.get(auth_url, follow_redirects=False)
    assert reply.status_code == 302, reply.text
    return reply.headers["location"]


async def token(services: Services, connection_id: str) -> connections_pb2.TokenPayload:
    return await connections(services).GetToken(
        connections_pb2.GetTokenRequest(connection_id=connection_id), metadata=ADMIN
    )


async def check(services: Services, connection_id: str) -> connections_pb2.Connection:
    return await connections(services).CheckConnection(
        connections_pb2.CheckConnectionRequest(connection_id=connection_id), metadata=ADMIN
    )


async def force_refresh(services: Services, connection_id: str) -> connections_pb2.Connection:
    return await connections(services).RefreshConnection(
        connections_pb2.RefreshConnectionRequest(connection_id=connection_id), metadata=ADMIN
    )


async def userinfo_status(idp: OidcServer, access_token: str) -> int:
    """What the provider's userinfo endpoint says of a token."""
    async with httpx.AsyncClient() as client:
        reply = await client.get(
            f"{idp.issuer}/userinfo", headers={"Authorization": f"Bearer {access_token}"}
        )
    return reply.status_code


def refresh_calls(idp: OidcServer) -> int:
    return int(stats(idp)["token_calls"].get("refresh_token", 0))  # type: ignore[union-attr]


async def test_full_redirect_flow_yields_a_token_the_provider_accepts(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    started_at = datetime.now(UTC)
    connection_id = await connect(services, idp, app)
    status = await check(services, connection_id)
    assert status.status == "active" and status.HasField("last_refreshed_at")
    assert status.next_refresh_at.ToDatetime(UTC) > started_at
    payload = await token(services, connection_id)
    as_json = json_format.MessageToDict(payload, preserving_proto_field_name=True)
    assert as_json["strategy"] == {"type": "oauth2"}
    assert "refresh_token" not in str(as_json)
    assert payload.expires_at == int(payload.credentials["expires_at"])
    assert payload.expires_at > started_at.timestamp()
    access_token = payload.credentials["access_token"]
    userinfo = await userinfo_status(idp, access_token)
    assert userinfo == 200
    seen = stats(idp)
    assert seen["client_auth"] == ["client_secret_basic"]
    assert seen["scope_on_exchange"] == [True]


async def test_exchange_honours_client_secret_post_and_skip_scope(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await connect(
        services,
        idp,
        app,
        token_endpoint_auth_method="client_secret_post",
        skip_scope_on_exchange=True,
    )
    seen = stats(idp)
    assert seen["client_auth"] == ["client_secret_post"]
    assert seen["scope_on_exchange"] == [False]


async def test_authorization_url_carries_pkce_state_nonce_and_extra_params(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_idp(services, idp, access_type="offline", skip_scope_on_auth=False)
    started = await start(services, f"{app.url}/done", scopes=("openid",))
    assert started.auth_url == f"{services.browser_url}/v1/connect/{started.state}"
    async with httpx.AsyncClient() as browser:
        to_provider = await open_auth_url(browser, started.auth_url)
    assert to_provider.startswith(f"{idp.issuer}/authorize?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(to_provider).query).items()}
    assert query["client_id"] == "nexus-client" and query["response_type"] == "code"
    assert query["redirect_uri"] == f"{services.browser_url}/v1/callback/mock-idp"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["state"] == started.state and query["nonce"]
    assert query["scope"] == "openid" and query["access_type"] == "offline"
    assert (await check(services, started.connection_id)).status == "pending"


async def test_provider_error_fails_the_connection_and_redirects_with_it(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_idp(services, idp)
    started = await start(services, f"{app.url}/done")
    async with httpx.AsyncClient(follow_redirects=True) as browser:
        await open_auth_url(browser, started.auth_url)
        landing = await browser.get(
            f"{services.browser_url}/v1/callback/mock-idp?error=access_denied&state={started.state}"
        )
    query = parse_qs(urlsplit(str(landing.url)).query)
    assert query["status"] == ["error"] and query["error"] == ["access_denied"]
    status = await check(services, started.connection_id)
    assert status.status == "failed" and status.last_error == "access_denied"


@pytest.mark.parametrize("kind", ["tampered", "expired", "replayed", "missing"])
async def test_bad_state_is_refused_without_changing_anything(
    services: Services, idp: OidcServer, app: AppServer, kind: str
) -> None:
    await register_idp(services, idp)
    started = await start(services, f"{app.url}/done")
    state = started.state
    if kind == "tampered":
        state = state[:-2] + ("AA" if not state.endswith("AA") else "BB")
    elif kind == "expired":
        state = (
            StateSigner(STATE_KEY.encode()).issue(datetime.now(UTC) - timedelta(seconds=1)).token
        )
    elif kind == "missing":
        state = ""
    elif kind == "replayed":
        first = await browse(started.auth_url)
        assert "status=success" in str(first.url)
    before = await check(services, started.connection_id)
    async with httpx.AsyncClient() as browser:
        reply = await browser.get(
            f"{services.browser_url}/v1/callback/mock-idp",
            params={"state": state, "code": "stolen-code"},
        )
    assert reply.status_code == 400 and "text/html" in reply.headers["content-type"]
    assert 'data-reason="STATE_INVALID"' in reply.text
    assert await check(services, started.connection_id) == before


async def test_return_url_must_be_allowlisted(services: Services, idp: OidcServer) -> None:
    await register_idp(services, idp)
    for url in (
        "https://evil.example/cb",
        "javascript:alert(1)",
        "http://127.0.0.1.evil.example/x",
    ):
        await expect_error(start(services, url), INVALID, "RETURN_URL_NOT_ALLOWED")


async def test_scopes_must_be_offered_by_the_provider(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_idp(services, idp)
    message = await expect_error(
        start(services, f"{app.url}/done", scopes=("contacts:read", "admin:all")),
        INVALID,
        "SCOPE_NOT_OFFERED",
    )
    assert "admin:all" in message


async def test_unknown_connection_is_not_found(services: Services) -> None:
    await expect_error(
        check(services, "no-such-connection"), grpc.StatusCode.NOT_FOUND, "CONNECTION_NOT_FOUND"
    )
    await expect_error(
        token(services, "no-such-connection"), grpc.StatusCode.NOT_FOUND, "CONNECTION_NOT_FOUND"
    )


async def test_token_reads_need_a_credential(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    connection_id = await connect(services, idp, app)
    request = connections_pb2.GetTokenRequest(connection_id=connection_id)
    for metadata in ((), (("x-api-key", "nxa_wrong"),)):
        await expect_error(
            connections(services).GetToken(request, metadata=metadata),
            grpc.StatusCode.UNAUTHENTICATED,
            "UNAUTHENTICATED",
        )


async def test_a_pending_connection_is_pending_not_failed(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_idp(services, idp)
    started = await start(services, f"{app.url}/done")
    assert (await check(services, started.connection_id)).status == "pending"
    await expect_error(
        token(services, started.connection_id), FAILED_PRECONDITION, "CONNECTION_NOT_ACTIVE"
    )


async def test_fifty_concurrent_reads_of_an_expired_token_cause_one_refresh(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    behave(idp, expires_in=1)
    connection_id = await connect(services, idp, app)
    behave(idp, expires_in=3600)
    await asyncio.sleep(1.2)
    assert refresh_calls(idp) == 0
    payloads = await asyncio.gather(*(token(services, connection_id) for _ in range(50)))
    assert refresh_calls(idp) == 1
    assert len({p.credentials["access_token"] for p in payloads}) == 1
    assert min(p.expires_at for p in payloads) > datetime.now(UTC).timestamp() + 3000


async def test_forced_refresh_keeps_a_refresh_token_the_provider_did_not_rotate(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    connection_id = await connect(services, idp, app)
    behave(idp, rotate_refresh_token=False)
    before = refresh_calls(idp)
    refreshed = await force_refresh(services, connection_id)
    assert refresh_calls(idp) == before + 1
    assert refreshed.status == "active" and refreshed.last_error == ""
    # A second refresh still has a refresh token to send.
    await force_refresh(services, connection_id)
    assert refresh_calls(idp) == before + 2


async def test_invalid_grant_needs_reconsent(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    connection_id = await connect(services, idp, app)
    behave(idp, token="invalid_grant")
    await expect_error(
        force_refresh(services, connection_id),
        FAILED_PRECONDITION,
        "CONNECTION_REAUTH_REQUIRED",
    )
    status = await check(services, connection_id)
    assert status.status == "attention" and "invalid_grant" in status.last_error
    message = await expect_error(
        token(services, connection_id), FAILED_PRECONDITION, "CONNECTION_REAUTH_REQUIRED"
    )
    assert "reconnect" in message


async def test_provider_outage_keeps_the_connection_usable_until_it_recovers(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    connection_id = await connect(services, idp, app)
    behave(idp, token="server_error")
    await expect_error(
        force_refresh(services, connection_id),
        grpc.StatusCode.UNAVAILABLE,
        "PROVIDER_UNAVAILABLE",
    )
    status = await check(services, connection_id)
    assert status.status == "active" and "HTTP 500" in status.last_error
    assert status.next_refresh_at.ToDatetime(UTC) > datetime.now(UTC)
    assert (await token(services, connection_id)).credentials["access_token"]
    behave(idp, token="ok")
    # The backoff holds for everyone, forced refreshes included.
    calls = stats(idp)["token_calls"]["refresh_token"]  # type: ignore[index]
    message = await expect_error(
        force_refresh(services, connection_id),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "REFRESH_RATE_LIMITED",
    )
    assert "is failing" in message
    assert stats(idp)["token_calls"]["refresh_token"] == calls  # type: ignore[index]
    await asyncio.sleep(
        (status.next_refresh_at.ToDatetime(UTC) - datetime.now(UTC)).total_seconds() + 0.1
    )
    recovered = await force_refresh(services, connection_id)
    assert recovered.status == "active" and recovered.last_error == ""


async def test_revoking_revokes_at_the_provider_and_stops_token_reads(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    connection_id = await connect(services, idp, app)
    access_token = (await token(services, connection_id)).credentials["access_token"]
    revoked = await connections(services).RevokeConnection(
        connections_pb2.RevokeConnectionRequest(connection_id=connection_id), metadata=ADMIN
    )
    assert revoked.status == "revoked"
    await asyncio.sleep(0.2)
    assert access_token in stats(idp)["revoked"]  # type: ignore[operator]
    userinfo = await userinfo_status(idp, access_token)
    assert userinfo == 401
    message = await expect_error(
        token(services, connection_id), FAILED_PRECONDITION, "CONNECTION_NOT_ACTIVE"
    )
    assert "revoked" in message


async def test_list_and_delete_a_workspace_connections(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    connection_id = await connect(services, idp, app)
    listed = await connections(services).ListConnections(
        connections_pb2.ListConnectionsRequest(workspace_id="user_sarah"), metadata=ADMIN
    )
    assert [(c.connection_id, c.provider_name, c.status) for c in listed.connections] == [
        (connection_id, "mock-idp", "active")
    ]
    await connections(services).DeleteConnection(
        connections_pb2.DeleteConnectionRequest(connection_id=connection_id), metadata=ADMIN
    )
    await expect_error(
        check(services, connection_id), grpc.StatusCode.NOT_FOUND, "CONNECTION_NOT_FOUND"
    )
    events = await gateway_pb2_grpc.AuditServiceStub(services.gateway).ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(resource=f"connections/{connection_id}"), metadata=ADMIN
    )
    assert [e.action for e in reversed(events.audit_events)] == [
        "connection.create",
        "connection.activate",
        "connection.revoke",
        "connection.delete",
    ]


def weather_provider(app: AppServer) -> providers_pb2.Provider:
    params = struct_pb2.Struct()
    params.update(
        {
            "credential_schema": {
                "fields": [
                    {"name": "api_key", "label": "API key", "in": "header", "key": "X-Api-Key"},
                ]
            }
        }
    )
    return providers_pb2.Provider(
        name="weather",
        auth_type="api_key",
        api_base_url=app.url,
        user_info_endpoint="/api/me",
        params=params,
    )


async def test_api_key_through_the_hosted_form(services: Services, app: AppServer) -> None:
    await register(services, weather_provider(app))
    started = await start(services, f"{app.url}/done", provider_name="weather")
    capture_url = f"{services.browser_url}/v1/capture/{started.state}"
    async with httpx.AsyncClient(follow_redirects=True, timeout=30) as browser:
        page = await browser.get(started.auth_url)
        assert str(page.url) == capture_url
        assert (
            page.status_code == 200
            and 'name="api_key"' in page.text
            and 'type="password"' in page.text
        )
        assert "default-src 'none'" in page.headers["content-security-policy"]
        rejected = await browser.post(capture_url, data={"api_key": "wrong-key"})
        assert rejected.status_code == 400 and "rejected" in rejected.text
        assert 'data-reason="CREDENTIALS_REJECTED"' in rejected.text
        assert "wrong-key" not in rejected.text
        assert (await check(services, started.connection_id)).status == "pending"
        landing = await browser.post(capture_url, data={"api_key": GOOD_API_KEY})
        assert parse_qs(urlsplit(str(landing.url)).query)["status"] == ["success"]
        replay = await browser.post(capture_url, data={"api_key": "other-key"})
        assert replay.status_code == 400
    payload = await token(services, started.connection_id)
    assert json_format.MessageToDict(payload.strategy) == {
        "type": "api_key",
        "fields": [{"name": "api_key", "in": "header", "key": "X-Api-Key"}],
    }
    assert dict(payload.credentials) == {"api_key": GOOD_API_KEY}
    assert not payload.HasField("expires_at")


async def test_basic_auth_through_the_json_api(services: Services, app: AppServer) -> None:
    await register(
        services,
        providers_pb2.Provider(
            name="legacy-crm",
            auth_type="basic_auth",
            api_base_url=app.url,
            user_info_endpoint="/api/me",
        ),
    )
    started = await start(services, f"{app.url}/done", provider_name="legacy-crm")

    async def capture(values: dict[str, str]) -> connections_pb2.CaptureCredentialsResponse:
        return await connections(services).CaptureCredentials(
            gateway_pb2.CaptureCredentialsRequest(
                capture=connections_pb2.CaptureCredentialsRequest(
                    state=started.state, credentials=values
                )
            ),
            metadata=ADMIN,
        )

    await expect_error(capture({"username": "ada"}), INVALID, "VALIDATION_FAILED")
    await expect_error(
        capture({"username": "ada", "password": "x", "pin": "1"}), INVALID, "VALIDATION_FAILED"
    )
    await expect_error(
        capture({"username": "ada", "password": "wrong"}), INVALID, "CREDENTIALS_REJECTED"
    )
    assert (await check(services, started.connection_id)).status == "pending"
    done = await capture(dict(zip(("username", "password"), GOOD_BASIC, strict=True)))
    assert done.status == "active" and done.connection_id == started.connection_id
    await expect_error(capture({"username": "eve", "password": "x"}), INVALID, "STATE_INVALID")
    payload = await token(services, started.connection_id)
    assert json_format.MessageToDict(payload.strategy) == {"type": "basic_auth"}
    assert dict(payload.credentials) == {"username": "ada", "password": "lovelace"}


async def run_refresh_loop_once(services: Services) -> None:
    """One pass of the broker's background loop, as it runs every few seconds."""
    refresher = services.broker.core.refresher
    for lease in await refresher.claim_due(batch=50):
        await refresher.refresh_claimed(lease)


async def stored_refresh_token(services: Services, connection_id: str) -> str | None:
    async with services.broker.core.deps.uow() as uow:
        tokens = await uow.connections.tokens(connection_id)
    assert tokens is not None
    return tokens.refresh_token


async def test_the_loop_retries_a_failed_refresh_and_recovers_by_itself(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    connection_id = await connect(services, idp, app)
    original = await stored_refresh_token(services, connection_id)
    behave(idp, token="server_error", rotate_refresh_token=False)
    await expect_error(
        force_refresh(services, connection_id),
        grpc.StatusCode.UNAVAILABLE,
        "PROVIDER_UNAVAILABLE",
    )
    behave(idp, token="ok")
    await asyncio.sleep(0.6)  # past the (test-sized) backoff
    await run_refresh_loop_once(services)
    status = await check(services, connection_id)
    assert status.status == "active" and status.last_error == ""
    assert refresh_calls(idp) == 2
    # The provider did not rotate: the refresh token it issued first is kept.
    assert await stored_refresh_token(services, connection_id) == original


async def test_a_dead_connection_causes_no_refresh_storm(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    connection_id = await connect(services, idp, app)
    behave(idp, token="invalid_grant")
    with pytest.raises(grpc.aio.AioRpcError):
        await force_refresh(services, connection_id)
    calls = refresh_calls(idp)
    for _ in range(3):
        await run_refresh_loop_once(services)
        with pytest.raises(grpc.aio.AioRpcError):
            await token(services, connection_id)
    assert refresh_calls(idp) == calls
    assert (await check(services, connection_id)).HasField("next_refresh_at") is False


async def test_a_deleted_provider_cannot_start_connections(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    provider = await register_idp(services, idp)
    await gateway_pb2_grpc.ProviderServiceStub(services.gateway).DeleteProvider(
        providers_pb2.DeleteProviderRequest(id=provider.id), metadata=ADMIN
    )
    request = connections_pb2.RequestConnectionRequest(
        workspace_id="user_sarah", provider_id=provider.id, return_url=f"{app.url}/done"
    )
    await expect_error(
        connections(services).RequestConnection(
            gateway_pb2.RequestConnectionRequest(connection=request), metadata=ADMIN
        ),
        FAILED_PRECONDITION,
        "PROVIDER_DELETED",
    )


async def test_an_oauth_state_does_not_open_the_capture_page(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    await register_idp(services, idp)
    started = await start(services, f"{app.url}/done")
    async with httpx.AsyncClient() as browser:
        page = await browser.get(f"{services.browser_url}/v1/capture/{started.state}")
    assert page.status_code == 400


# The suite's 0.2 s backoff could lapse while 20 callers are still arriving on a busy machine;
# this one outlives the test, so a second refresh would be a storm, not a retry.
@pytest.mark.parametrize("service_overrides", [{"NEXUS_REFRESH_MIN_BACKOFF_SECONDS": "600"}])
async def test_callers_during_an_outage_do_not_storm_the_provider(
    services: Services, idp: OidcServer, app: AppServer
) -> None:
    behave(idp, expires_in=1)
    connection_id = await connect(services, idp, app)
    await asyncio.sleep(1.2)
    behave(idp, token="server_error")
    results = await asyncio.gather(
        *(token(services, connection_id) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, grpc.aio.AioRpcError) for r in results)
    assert {r.code() for r in results} == {grpc.StatusCode.UNAVAILABLE}  # type: ignore[union-attr]
    assert refresh_calls(idp) == 1


async def test_static_credentials_do_not_refresh(services: Services, app: AppServer) -> None:
    await register(services, providers_pb2.Provider(name="legacy-crm", auth_type="basic_auth"))
    started = await start(services, f"{app.url}/done", provider_name="legacy-crm")
    await connections(services).CaptureCredentials(
        gateway_pb2.CaptureCredentialsRequest(
            capture=connections_pb2.CaptureCredentialsRequest(
                state=started.state, credentials={"username": "ada", "password": "pw"}
            )
        ),
        metadata=ADMIN,
    )
    await expect_error(
        force_refresh(services, started.connection_id), FAILED_PRECONDITION, "REFRESH_NOT_SUPPORTED"
    )


async def test_a_capture_state_does_not_complete_an_oauth_callback(
    services: Services, app: AppServer
) -> None:
    await register(services, weather_provider(app))
    started = await start(services, f"{app.url}/done", provider_name="weather")
    async with httpx.AsyncClient() as browser:
        reply = await browser.get(
            f"{services.browser_url}/v1/callback/weather",
            params={"state": started.state, "code": "x"},
        )
    assert reply.status_code == 400
    assert (await check(services, started.connection_id)).status == "pending"
