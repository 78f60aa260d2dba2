"""Narrowed session tokens: checked against what was asked, shared, and never a call at will.

The provider is a real OAuth server on loopback that counts every refresh
grant it is sent and can ignore a narrower ``scope`` (answering with the full
grant, as RFC 6749 §3.3 allows it to). gRPC through the gateway; SQLite and
PostgreSQL. The window of forced refreshes, which narrowing shares, is an hour
here: within one test nothing may call the provider twice because of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest
import sqlalchemy as sa
from nexus.broker.v1 import providers_pb2
from nexus.gateway.v1 import gateway_pb2

from tests.conftest import Services
from tests.integration.helpers import expect_error, peek
from tests.integration.test_connections import (
    browse,
    register,
    run_refresh_loop_once,
    start,
)
from tests.integration.test_sessions import agent_session, bearer, register_agent, sessions
from tests.support.app_server import AppServer
from tests.support.rotating_provider import RotatingProvider

READ, WRITE = "contacts:read", "contacts:write"
MAX_TTL = 3600


@pytest.fixture
def service_overrides() -> dict[str, str]:
    return {
        "NEXUS_FORCED_REFRESH_INTERVAL_SECONDS": "3600",
        "NEXUS_SESSION_MAX_TTL_SECONDS": str(MAX_TTL),
        # A failing provider backs off for minutes: no test outlives it.
        "NEXUS_REFRESH_MIN_BACKOFF_SECONDS": "600",
        "NEXUS_REFRESH_MAX_BACKOFF_SECONDS": "900",
    }


@pytest.fixture
def provider() -> Iterator[RotatingProvider]:
    with RotatingProvider() as server:
        yield server


async def _connect(
    services: Services, app: AppServer, provider: RotatingProvider, **params: object
) -> str:
    """An active connection granted both scopes by a provider that narrows."""
    registered = providers_pb2.Provider(
        name="crm",
        auth_type="oauth2",
        client_id="nexus-client",
        client_secret="s3cret",
        auth_url=f"{provider.url}/authorize",
        token_url=f"{provider.url}/token",
        scopes=[READ, WRITE],
    )
    registered.params.update({"supports_scope_narrowing": True, **params})
    await register(services, registered)
    started = await start(services, f"{app.url}/done", provider_name="crm", scopes=(READ, WRITE))
    landing = await browse(started.auth_url)
    assert parse_qs(urlsplit(str(landing.url)).query)["status"] == ["success"], landing.text
    return started.connection_id


def _ask(*scopes: str, ttl: int = MAX_TTL) -> gateway_pb2.CreateAgentSessionRequest:
    return agent_session(agent_id="crm-agent", provider="crm", scopes=list(scopes), ttl_seconds=ttl)


async def test_a_provider_that_ignores_narrowing_gets_the_real_scopes_reported(
    services: Services, app: AppServer, provider: RotatingProvider
) -> None:
    await _connect(services, app, provider)
    key = await register_agent(services, "crm-agent", [READ, WRITE])
    provider.granted_scope = f"{READ} {WRITE}"

    session = await sessions(services).CreateAgentSession(_ask(READ), metadata=bearer(key))

    assert provider.asked_scopes == [READ]  # it was asked to narrow, and did not
    assert list(session.scopes) == [READ]
    assert sorted(session.token_scopes) == [READ, WRITE]


async def test_where_broader_tokens_are_refused_an_ignored_narrowing_is_refused(
    services: Services, app: AppServer, provider: RotatingProvider
) -> None:
    await _connect(services, app, provider, allow_broader_session_tokens=False)
    key = await register_agent(services, "crm-agent", [READ, WRITE])
    provider.granted_scope = f"{READ} {WRITE}"
    message = await expect_error(
        sessions(services).CreateAgentSession(_ask(READ), metadata=bearer(key)),
        grpc.StatusCode.PERMISSION_DENIED,
        "TOKEN_BROADER_THAN_SESSION",
    )
    assert "granted more than" in message, message


async def test_twenty_maximum_lifetime_sessions_make_at_most_one_provider_call(
    services: Services, app: AppServer, provider: RotatingProvider
) -> None:
    await _connect(services, app, provider)
    key = await register_agent(services, "crm-agent", [READ, WRITE])
    before = provider.refresh_calls

    issued = [
        await sessions(services).CreateAgentSession(_ask(READ), metadata=bearer(key))
        for _ in range(20)
    ]

    assert provider.refresh_calls - before <= 1
    assert len({s.access_token for s in issued}) == 1
    assert all(list(s.token_scopes) == [READ] for s in issued)
    # Each session ends with the shared token at the latest.
    first = issued[0]
    assert all(s.expires_at <= first.expires_at for s in issued)


async def test_narrowing_is_limited_per_connection_as_forced_refreshes_are(
    services: Services, app: AppServer, provider: RotatingProvider
) -> None:
    await _connect(services, app, provider)
    key = await register_agent(services, "crm-agent", [READ, WRITE])
    await sessions(services).CreateAgentSession(_ask(READ), metadata=bearer(key))
    calls = provider.refresh_calls

    # Other scopes within the window: no provider call; the broader token, said so.
    other = await sessions(services).CreateAgentSession(_ask(WRITE), metadata=bearer(key))

    assert provider.refresh_calls == calls
    assert sorted(other.token_scopes) == [READ, WRITE]


async def test_where_broader_tokens_are_refused_a_limited_narrowing_is_rate_limited(
    services: Services, app: AppServer, provider: RotatingProvider
) -> None:
    await _connect(services, app, provider, allow_broader_session_tokens=False)
    key = await register_agent(services, "crm-agent", [READ, WRITE])
    await sessions(services).CreateAgentSession(_ask(READ), metadata=bearer(key))
    calls = provider.refresh_calls
    await expect_error(
        sessions(services).CreateAgentSession(_ask(WRITE), metadata=bearer(key)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "REFRESH_RATE_LIMITED",
    )
    assert provider.refresh_calls == calls


async def test_no_narrowing_while_the_provider_backs_off(
    services: Services, app: AppServer, provider: RotatingProvider
) -> None:
    connection_id = await _connect(services, app, provider, allow_broader_session_tokens=False)
    key = await register_agent(services, "crm-agent", [READ, WRITE])
    provider.failing = True
    engine = peek(services.env["NEXUS_BROKER_DATABASE_URL"])
    try:
        with engine.begin() as db:
            db.execute(
                sa.text("UPDATE connections SET next_refresh_at = created_at WHERE id = :id"),
                {"id": connection_id},
            )
    finally:
        engine.dispose()
    await run_refresh_loop_once(services)  # fails: the connection backs off for minutes
    calls = provider.refresh_calls
    assert calls == 1

    for _ in range(5):
        await expect_error(
            sessions(services).CreateAgentSession(_ask(READ), metadata=bearer(key)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "REFRESH_RATE_LIMITED",
        )
    assert provider.refresh_calls == calls
