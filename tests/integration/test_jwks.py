"""JwksVerifier against a real issuer's key set (tests/support/backend_auth_server.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from nexus_common import JwksUnavailable, JwksVerifier, JwtVerificationError

from tests.support.backend_auth_server import BackendAuthServer, start_backend_auth_server


@pytest.fixture
def issuer() -> Iterator[BackendAuthServer]:
    with start_backend_auth_server() as server:
        yield server


async def _verify(
    verifier: JwksVerifier, issuer: BackendAuthServer, token: str
) -> dict[str, object]:
    return await verifier.verify(
        token, jwks_uri=issuer.jwks_url, issuer=issuer.issuer, audience=issuer.audience
    )


def _kid(issuer: BackendAuthServer) -> str:
    kid = jwt.get_unverified_header(issuer.issue_token("x", permissions=[]))["kid"]
    assert isinstance(kid, str)
    return kid


async def test_a_token_signed_by_a_published_key_verifies(
    http: httpx.AsyncClient, issuer: BackendAuthServer
) -> None:
    claims = await _verify(JwksVerifier(http), issuer, issuer.issue_token("al", permissions=["p"]))
    assert claims["sub"] == "al"
    assert claims["permissions"] == ["p"]


async def test_the_key_set_is_cached_and_refetched_once_after_rotation(
    http: httpx.AsyncClient, issuer: BackendAuthServer
) -> None:
    verifier = JwksVerifier(http, min_refetch_seconds=0)
    await _verify(verifier, issuer, issuer.issue_token("al", permissions=[]))
    await _verify(verifier, issuer, issuer.issue_token("bo", permissions=[]))
    assert issuer.jwks_calls == 1

    issuer.rotate_key()
    await _verify(verifier, issuer, issuer.issue_token("al", permissions=[]))
    await _verify(verifier, issuer, issuer.issue_token("bo", permissions=[]))
    assert issuer.jwks_calls == 2


def _stranger(issuer: BackendAuthServer, kid: str = "not-published") -> str:
    return jwt.encode(
        {"iss": issuer.issuer, "aud": issuer.audience, "sub": "al", "exp": time.time() + 60},
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": kid},
    )


async def _refused(verifier: JwksVerifier, issuer: BackendAuthServer, token: str) -> None:
    with pytest.raises(JwtVerificationError, match="does not publish"):
        await _verify(verifier, issuer, token)


async def test_an_unknown_key_id_refetches_once_then_fails(
    http: httpx.AsyncClient, issuer: BackendAuthServer
) -> None:
    verifier = JwksVerifier(http, min_refetch_seconds=0)
    await _verify(verifier, issuer, issuer.issue_token("al", permissions=[]))
    await _refused(verifier, issuer, _stranger(issuer))
    assert issuer.jwks_calls == 2


async def test_forged_key_ids_make_at_most_one_fetch_per_interval(
    http: httpx.AsyncClient, issuer: BackendAuthServer
) -> None:
    interval = 1.0
    verifier = JwksVerifier(http, min_refetch_seconds=interval)
    await _verify(verifier, issuer, issuer.issue_token("al", permissions=[]))
    forged = [_stranger(issuer, f"forged-{n}") for n in range(100)]
    # Within the interval of the first fetch: none refetches, one after another or at once.
    for token in forged[:50]:
        await _refused(verifier, issuer, token)
    await asyncio.gather(*(_refused(verifier, issuer, token) for token in forged[50:]))
    assert issuer.jwks_calls == 1
    # A later interval allows one refetch, shared by 100 forged tokens at once.
    await asyncio.sleep(interval)
    await asyncio.gather(*(_refused(verifier, issuer, token) for token in forged))
    assert issuer.jwks_calls == 2
    for token in forged:
        await _refused(verifier, issuer, token)
    assert issuer.jwks_calls == 2


async def test_a_rotated_key_verifies_once_the_interval_has_passed(
    http: httpx.AsyncClient, issuer: BackendAuthServer
) -> None:
    interval = 0.5
    verifier = JwksVerifier(http, min_refetch_seconds=interval)
    await _verify(verifier, issuer, issuer.issue_token("al", permissions=[]))
    issuer.rotate_key()
    rotated = issuer.issue_token("bo", permissions=[])
    await _refused(verifier, issuer, rotated)
    await asyncio.sleep(interval)
    assert (await _verify(verifier, issuer, rotated))["sub"] == "bo"
    assert issuer.jwks_calls == 2


async def test_a_failed_refetch_also_waits_for_the_interval(
    http: httpx.AsyncClient, issuer: BackendAuthServer
) -> None:
    interval = 0.5
    verifier = JwksVerifier(http, min_refetch_seconds=interval, timeout_seconds=2.0)
    await _verify(verifier, issuer, issuer.issue_token("al", permissions=[]))
    await asyncio.sleep(interval)
    issuer.stop()
    with pytest.raises(JwksUnavailable):
        await _verify(verifier, issuer, _stranger(issuer, "forged-0"))
    # That failed attempt starts an interval too: the cached set answers meanwhile.
    for n in range(1, 20):
        await _refused(verifier, issuer, _stranger(issuer, f"forged-{n}"))


@pytest.mark.parametrize(
    ("audience", "expires_in", "why"),
    [
        ("someone-else", 300, "another audience"),
        (None, -300, "expired"),
    ],
)
async def test_audience_and_expiry_are_enforced(
    http: httpx.AsyncClient,
    issuer: BackendAuthServer,
    audience: str | None,
    expires_in: int,
    why: str,
) -> None:
    token = issuer.issue_token("al", permissions=[], expires_in=expires_in)
    with pytest.raises(JwtVerificationError, match=why):
        await JwksVerifier(http).verify(
            token,
            jwks_uri=issuer.jwks_url,
            issuer=issuer.issuer,
            audience=audience or issuer.audience,
        )


async def test_issuer_and_signature_are_enforced(
    http: httpx.AsyncClient, issuer: BackendAuthServer
) -> None:
    verifier = JwksVerifier(http)
    with pytest.raises(JwtVerificationError, match="another issuer"):
        await verifier.verify(
            issuer.issue_token("al", permissions=[]),
            jwks_uri=issuer.jwks_url,
            issuer="https://impostor.example",
            audience=issuer.audience,
        )
    with pytest.raises(JwtVerificationError, match="signature"):
        await _verify(verifier, issuer, issuer.forge_token("al", permissions=[]))


@pytest.mark.parametrize("algorithm", ["HS256", "none"])
async def test_symmetric_and_unsigned_tokens_are_refused(
    http: httpx.AsyncClient, issuer: BackendAuthServer, algorithm: str
) -> None:
    # With HS256 allowed, anyone holding the published key could sign as the issuer.
    claims = {"iss": issuer.issuer, "aud": issuer.audience, "sub": "al", "exp": time.time() + 60}
    key = "k" * 32 if algorithm == "HS256" else ""
    token = jwt.encode(claims, key, algorithm=algorithm, headers={"kid": _kid(issuer)})
    with pytest.raises(JwtVerificationError, match="algorithm"):
        await _verify(JwksVerifier(http), issuer, token)
    assert issuer.jwks_calls == 0


async def test_required_claims_must_be_present(
    http: httpx.AsyncClient, issuer: BackendAuthServer
) -> None:
    token = issuer.issue_token("al", permissions=[])
    with pytest.raises(JwtVerificationError, match="'nonce'"):
        await JwksVerifier(http).verify(
            token,
            jwks_uri=issuer.jwks_url,
            issuer=issuer.issuer,
            audience=issuer.audience,
            require=("exp", "nonce"),
        )


@pytest.mark.parametrize("path", ["/missing", "/auth/me"])
async def test_a_key_set_that_cannot_be_fetched_is_unavailable(
    http: httpx.AsyncClient, issuer: BackendAuthServer, path: str
) -> None:
    with pytest.raises(JwksUnavailable):
        await JwksVerifier(http).verify(
            issuer.issue_token("al", permissions=[]),
            jwks_uri=issuer.issuer + path,
            issuer=issuer.issuer,
            audience=issuer.audience,
        )


async def test_an_unreachable_key_set_is_unavailable(
    http: httpx.AsyncClient, issuer: BackendAuthServer
) -> None:
    token = issuer.issue_token("al", permissions=[])
    issuer.stop()
    with pytest.raises(JwksUnavailable, match="could not be fetched"):
        await _verify(JwksVerifier(http, timeout_seconds=2.0), issuer, token)


async def test_a_malformed_token_is_refused_without_fetching_keys(
    http: httpx.AsyncClient, issuer: BackendAuthServer
) -> None:
    with pytest.raises(JwtVerificationError, match="well-formed"):
        await _verify(JwksVerifier(http), issuer, "not-a-jwt")
    assert issuer.jwks_calls == 0
