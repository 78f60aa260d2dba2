"""The OBO user check against a real backend server (tests/support/backend_auth_server.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from nexus_common import BackendAuthUnavailable, NexusError, UserTokenInvalid, ValidationFailed
from nexus_policy.adapters.backend_auth import BackendAuthClient, LocalVerification, UserContext

from tests.support.backend_auth_server import BackendAuthServer, start_backend_auth_server


class _Clock:
    """Unix seconds that a test moves forward by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def backend() -> Iterator[BackendAuthServer]:
    with start_backend_auth_server() as server:
        yield server


def _client(
    http: httpx.AsyncClient,
    backend: BackendAuthServer,
    *,
    cache_seconds: float = 30.0,
    timeout_seconds: float = 2.0,
    local: bool = False,
    clock: _Clock | None = None,
    cache_size: int = 10_000,
) -> BackendAuthClient:
    return BackendAuthClient(
        http,
        backend.url,
        timeout_seconds=timeout_seconds,
        cache_seconds=cache_seconds,
        local=LocalVerification(backend.issuer, backend.audience, backend.jwks_url)
        if local
        else None,
        clock=clock or _Clock(),
        cache_size=cache_size,
    )


async def test_the_backend_answer_becomes_the_user_context(
    http: httpx.AsyncClient, backend: BackendAuthServer
) -> None:
    before = int(time.time())
    token = backend.issue_token(
        "alice",
        permissions=["repo:read", "mail:send"],
        tenant_id="acme",
        clearance_level=3,
        workspaces=["team-alice"],
    )

    context = await _client(http, backend).user_context(token)

    assert context == UserContext(
        user_id="alice",
        tenant_id="acme",
        clearance_level="3",
        permissions=frozenset({"repo:read", "mail:send"}),
        expires_at=context.expires_at,
        workspaces=frozenset({"team-alice"}),
    )
    assert context.expires_at is not None
    assert before + 300 <= context.expires_at <= time.time() + 300
    assert backend.calls == 1


@pytest.mark.parametrize("local", [False, True], ids=["backend", "local"])
async def test_forged_and_expired_tokens_are_invalid(
    http: httpx.AsyncClient, backend: BackendAuthServer, local: bool
) -> None:
    client = _client(http, backend, local=local)
    forged = backend.forge_token("alice", permissions=["repo:read"])
    expired = backend.issue_token("alice", permissions=["repo:read"], expires_in=-120)

    for token in (forged, expired):
        with pytest.raises(UserTokenInvalid):
            await client.user_context(token)


async def test_a_backend_that_refuses_the_token_makes_it_invalid(
    http: httpx.AsyncClient, backend: BackendAuthServer
) -> None:
    backend.set_mode("forbidden")
    with pytest.raises(UserTokenInvalid, match="rejected by the backend"):
        await _client(http, backend).user_context(backend.issue_token("bob", permissions=[]))


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("server_error", "HTTP 500"),
        ("garbage", "not JSON"),
        ("incomplete", "user_id"),
        ("slow", "did not answer within 0.5 s"),
    ],
)
async def test_a_misbehaving_backend_fails_closed(
    http: httpx.AsyncClient, backend: BackendAuthServer, mode: str, why: str
) -> None:
    backend.set_mode(mode)
    client = _client(http, backend, timeout_seconds=0.5)
    with pytest.raises(BackendAuthUnavailable, match=why):
        await client.user_context(backend.issue_token("bob", permissions=["x"]))


async def test_an_unreachable_backend_fails_closed(
    http: httpx.AsyncClient, backend: BackendAuthServer
) -> None:
    token = backend.issue_token("bob", permissions=["x"])
    client = _client(http, backend)
    backend.stop()
    with pytest.raises(BackendAuthUnavailable, match="could not be reached"):
        await client.user_context(token)


@pytest.mark.parametrize("mode", ["ok", "forbidden", "server_error", "garbage", "incomplete"])
async def test_errors_never_quote_the_token_or_the_backend_body(
    http: httpx.AsyncClient, backend: BackendAuthServer, mode: str
) -> None:
    backend.set_mode(mode)
    forged = backend.forge_token("mallory", permissions=["x"])
    with pytest.raises(NexusError) as caught:
        await _client(http, backend).user_context(forged)
    shown = f"{caught.value} {caught.value!r} {dict(caught.value.metadata)}"
    for secret in (forged, forged.split(".")[1], forged.split(".")[2], "surprise", "internal"):
        assert secret not in shown


async def test_local_verification_refuses_a_forged_token_without_asking_the_backend(
    http: httpx.AsyncClient, backend: BackendAuthServer
) -> None:
    client = _client(http, backend, local=True)
    with pytest.raises(UserTokenInvalid, match="signature"):
        await client.user_context(backend.forge_token("mallory", permissions=["admin"]))
    assert backend.calls == 0

    context = await client.user_context(backend.issue_token("alice", permissions=["a"]))
    assert context.user_id == "alice"
    assert backend.calls == 1


async def test_local_verification_fails_closed_without_signing_keys(
    http: httpx.AsyncClient, backend: BackendAuthServer
) -> None:
    client = BackendAuthClient(
        http,
        backend.url,
        timeout_seconds=2.0,
        cache_seconds=30.0,
        local=LocalVerification(backend.issuer, backend.audience, f"{backend.issuer}/missing"),
    )
    with pytest.raises(BackendAuthUnavailable, match="signing keys"):
        await client.user_context(backend.issue_token("alice", permissions=["a"]))
    assert backend.calls == 0


async def test_an_answer_is_cached_per_token(
    http: httpx.AsyncClient, backend: BackendAuthServer
) -> None:
    client = _client(http, backend)
    alice = backend.issue_token("alice", permissions=["a"])

    first = await client.user_context(alice)
    assert await client.user_context(alice) == first
    assert backend.calls == 1

    await client.user_context(backend.issue_token("bob", permissions=["b"]))
    assert backend.calls == 2


async def test_concurrent_lookups_of_one_token_share_one_backend_call(
    http: httpx.AsyncClient, backend: BackendAuthServer
) -> None:
    client = _client(http, backend)
    token = backend.issue_token("alice", permissions=["a"])

    answers = await asyncio.gather(*(client.user_context(token) for _ in range(5)))

    assert len(set(answers)) == 1
    assert backend.calls == 1


@pytest.mark.parametrize("local", [False, True], ids=["unverified-exp", "verified-exp"])
async def test_the_cache_never_outlives_the_token(
    http: httpx.AsyncClient, backend: BackendAuthServer, local: bool
) -> None:
    clock = _Clock()
    client = _client(http, backend, cache_seconds=3600, local=local, clock=clock)
    token = backend.issue_token("alice", permissions=["a"], expires_in=30)

    await client.user_context(token)
    clock.now += 25
    await client.user_context(token)
    assert backend.calls == 1

    clock.now += 10  # past exp by this client's clock, though not the backend's
    with pytest.raises(UserTokenInvalid, match="expired"):
        await client.user_context(token)
    assert backend.calls == 2


async def test_the_cache_keeps_an_answer_at_most_cache_seconds(
    http: httpx.AsyncClient, backend: BackendAuthServer
) -> None:
    clock = _Clock()
    client = _client(http, backend, cache_seconds=10, clock=clock)
    token = backend.issue_token("alice", permissions=["a"], expires_in=300)

    await client.user_context(token)
    clock.now += 11
    await client.user_context(token)

    assert backend.calls == 2


async def test_cache_seconds_zero_asks_the_backend_every_time(
    http: httpx.AsyncClient, backend: BackendAuthServer
) -> None:
    client = _client(http, backend, cache_seconds=0)
    token = backend.issue_token("alice", permissions=["a"])

    await client.user_context(token)
    await client.user_context(token)

    assert backend.calls == 2


async def test_the_cache_forgets_the_least_recently_used_token(
    http: httpx.AsyncClient, backend: BackendAuthServer
) -> None:
    client = _client(http, backend, cache_size=2)
    alice, bob, carol = (backend.issue_token(name, permissions=[]) for name in ("a", "b", "c"))

    for token in (alice, bob, alice, carol):  # carol pushes out bob, used less recently
        await client.user_context(token)
    assert backend.calls == 3
    await client.user_context(alice)
    assert backend.calls == 3
    await client.user_context(bob)
    assert backend.calls == 4


@pytest.mark.parametrize("token", ["", "two words", "line\nbreak", "x" * (16 * 1024 + 1)])
async def test_a_token_that_is_not_a_bearer_token_is_a_validation_error(
    http: httpx.AsyncClient, backend: BackendAuthServer, token: str
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        await _client(http, backend).user_context(token)
    assert caught.value.metadata == {"field": "user_context_token"}
    assert token or caught.value.message == "user_context_token is required"
    assert backend.calls == 0
