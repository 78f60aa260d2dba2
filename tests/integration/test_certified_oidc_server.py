"""Self-test of the certified OIDC test server (tests/support/certified_oidc).

Other tests lean on what this server does, so each rule they rely on is shown
here against the server alone: discovery, the code flow with PKCE, scope
narrowing on refresh, refresh tokens that are not rotated, revocation that takes
the whole grant down, and the call counts.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import jwt
import pytest

from tests.support.certified_oidc import (
    ACCOUNT_ID,
    CertifiedOidc,
    certified_stats,
    introspect,
    start_certified_oidc,
)

# Nothing listens here: the flow stops at the redirect, it never connects.
REDIRECT_URI = "http://127.0.0.1:9/cb"
GRANTED = "openid crm:contacts:read crm:contacts:write"


@pytest.fixture
def certified() -> Iterator[CertifiedOidc]:
    with start_certified_oidc([REDIRECT_URI]) as server:
        yield server


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str
    id_token: str
    reply: dict[str, Any]
    nonce: str


async def authorize(
    server: CertifiedOidc, scope: str, browser: httpx.AsyncClient | None = None
) -> tuple[dict[str, list[str]], str, str]:
    """Follow the authorization flow to the redirect URI without connecting to it,
    in ``browser`` (its cookies are the end user's session) or a fresh one.
    Return the redirect's query, the PKCE verifier and the nonce."""
    if browser is None:
        async with httpx.AsyncClient(timeout=10) as fresh:
            return await authorize(server, scope, fresh)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    state = secrets.token_urlsafe(16)
    nonce = secrets.token_urlsafe(16)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": server.client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": scope,
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge.rstrip(b"=").decode(),
            "code_challenge_method": "S256",
        }
    )
    url = f"{server.issuer}/auth?{query}"
    for _ in range(10):
        reply = await browser.get(url, follow_redirects=False)
        assert reply.is_redirect, (reply.status_code, reply.text)
        url = urljoin(url, reply.headers["location"])
        if url.startswith(REDIRECT_URI):
            params = parse_qs(urlsplit(url).query)
            assert params["state"] == [state]
            return params, verifier, nonce
    raise AssertionError("the authorization flow did not reach the redirect URI")


async def sign_in(
    server: CertifiedOidc, scope: str = GRANTED, browser: httpx.AsyncClient | None = None
) -> Tokens:
    params, verifier, nonce = await authorize(server, scope, browser)
    reply = await token_call(
        server,
        grant_type="authorization_code",
        code=params["code"][0],
        redirect_uri=REDIRECT_URI,
        code_verifier=verifier,
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return Tokens(body["access_token"], body["refresh_token"], body["id_token"], body, nonce)


async def token_call(server: CertifiedOidc, **form: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(
            server.token_url, data=form, auth=(server.client_id, server.client_secret)
        )


async def get_json(url: str) -> Any:
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await client.get(url)
    reply.raise_for_status()
    return reply.json()


async def revoke(server: CertifiedOidc, token: str, hint: str | None = None) -> None:
    form = {"token": token} | ({"token_type_hint": hint} if hint else {})
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await client.post(
            server.revocation_url, data=form, auth=(server.client_id, server.client_secret)
        )
    assert reply.status_code == 200, reply.text


async def test_discovery_names_the_issuer_and_every_endpoint(certified: CertifiedOidc) -> None:
    discovery = await get_json(certified.discovery_url)

    assert discovery["issuer"] == f"http://127.0.0.1:{certified.port}" == certified.issuer
    assert discovery["token_endpoint"] == certified.token_url
    assert discovery["revocation_endpoint"] == certified.revocation_url
    assert discovery["introspection_endpoint"] == certified.introspection_url
    assert discovery["authorization_endpoint"] == f"{certified.issuer}/auth"
    assert "client_secret_basic" in discovery["token_endpoint_auth_methods_supported"]
    assert "S256" in discovery["code_challenge_methods_supported"]
    assert {"crm:contacts:read", "crm:contacts:write"} <= set(discovery["scopes_supported"])
    keys = (await get_json(discovery["jwks_uri"]))["keys"]
    assert [key["alg"] for key in keys] == ["RS256"]


async def test_code_flow_with_pkce_issues_a_refresh_token_and_a_signed_id_token(
    certified: CertifiedOidc,
) -> None:
    params, verifier, nonce = await authorize(certified, GRANTED)
    assert params["iss"] == [certified.issuer]

    reply = await token_call(
        certified,
        grant_type="authorization_code",
        code=params["code"][0],
        redirect_uri=REDIRECT_URI,
        code_verifier=verifier,
    )

    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body["scope"].split()) == set(GRANTED.split())
    assert body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= 3600
    assert body["access_token"] and body["refresh_token"]
    discovery = await get_json(certified.discovery_url)
    key = jwt.PyJWK((await get_json(discovery["jwks_uri"]))["keys"][0])
    claims = jwt.decode(
        body["id_token"],
        key,
        algorithms=["RS256"],
        audience=certified.client_id,
        issuer=certified.issuer,
    )
    assert claims["sub"] == ACCOUNT_ID
    assert claims["nonce"] == nonce


async def test_a_code_exchange_with_the_wrong_pkce_verifier_is_refused(
    certified: CertifiedOidc,
) -> None:
    params, _, _ = await authorize(certified, GRANTED)

    reply = await token_call(
        certified,
        grant_type="authorization_code",
        code=params["code"][0],
        redirect_uri=REDIRECT_URI,
        code_verifier=secrets.token_urlsafe(48),
    )

    assert reply.status_code == 400
    assert reply.json()["error"] == "invalid_grant"


async def test_a_refresh_may_narrow_the_scope_to_a_subset_of_the_grant(
    certified: CertifiedOidc,
) -> None:
    tokens = await sign_in(certified)

    reply = await token_call(
        certified,
        grant_type="refresh_token",
        refresh_token=tokens.refresh_token,
        scope="crm:contacts:read",
    )

    assert reply.status_code == 200, reply.text
    narrowed = reply.json()
    assert narrowed["scope"] == "crm:contacts:read"
    seen = introspect(certified, narrowed["access_token"])
    assert seen["active"] is True
    assert seen["scope"] == "crm:contacts:read"
    assert seen["client_id"] == certified.client_id
    # The grant itself keeps every scope: a later refresh may ask for all of them.
    full = await token_call(
        certified, grant_type="refresh_token", refresh_token=tokens.refresh_token
    )
    assert set(full.json()["scope"].split()) == set(GRANTED.split())


async def test_refresh_tokens_are_not_rotated(certified: CertifiedOidc) -> None:
    tokens = await sign_in(certified)

    for _ in range(2):
        reply = await token_call(
            certified, grant_type="refresh_token", refresh_token=tokens.refresh_token
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["refresh_token"] == tokens.refresh_token


async def test_revoking_a_narrowed_access_token_revokes_the_whole_grant(
    certified: CertifiedOidc,
) -> None:
    tokens = await sign_in(certified)
    reply = await token_call(
        certified,
        grant_type="refresh_token",
        refresh_token=tokens.refresh_token,
        scope="crm:contacts:read",
    )
    narrowed = reply.json()["access_token"]

    await revoke(certified, narrowed, "access_token")

    assert introspect(certified, narrowed) == {"active": False}
    # The grant's other tokens die with it: the first access token and the refresh token.
    assert introspect(certified, tokens.access_token) == {"active": False}
    assert introspect(certified, tokens.refresh_token) == {"active": False}
    again = await token_call(
        certified, grant_type="refresh_token", refresh_token=tokens.refresh_token
    )
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


async def test_revoking_the_refresh_token_revokes_the_whole_grant(
    certified: CertifiedOidc,
) -> None:
    tokens = await sign_in(certified)

    await revoke(certified, tokens.refresh_token)

    assert introspect(certified, tokens.access_token) == {"active": False}
    again = await token_call(
        certified, grant_type="refresh_token", refresh_token=tokens.refresh_token
    )
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


async def test_revoking_an_access_token_deletes_the_grant_so_consent_is_asked_again(
    certified: CertifiedOidc,
) -> None:
    async with httpx.AsyncClient(timeout=10) as browser:
        tokens = await sign_in(certified, browser=browser)
        await sign_in(certified, browser=browser)
        # The session remembers the grant: no second login, no second consent.
        assert certified_stats(certified)["interactions"] == {"login": 1, "consent": 1}

        await revoke(certified, tokens.access_token)
        await sign_in(certified, browser=browser)

    assert certified_stats(certified)["interactions"] == {"login": 1, "consent": 2}


async def test_revoking_one_grant_leaves_another_grant_alone(certified: CertifiedOidc) -> None:
    doomed = await sign_in(certified)
    kept = await sign_in(certified)

    await revoke(certified, doomed.access_token)

    assert introspect(certified, kept.access_token)["active"] is True
    reply = await token_call(
        certified, grant_type="refresh_token", refresh_token=kept.refresh_token
    )
    assert reply.status_code == 200, reply.text


async def test_stats_count_token_revocation_and_introspection_calls(
    certified: CertifiedOidc,
) -> None:
    tokens = await sign_in(certified)
    await token_call(certified, grant_type="refresh_token", refresh_token=tokens.refresh_token)
    await revoke(certified, tokens.access_token)
    introspect(certified, tokens.access_token)
    await token_call(certified, grant_type="refresh_token", refresh_token=tokens.refresh_token)

    assert certified_stats(certified) == {
        "token_calls": {"authorization_code": 1, "refresh_token": 2},
        "token_errors": {"invalid_grant": 1},
        "revocation_calls": 1,
        "introspection_calls": 1,
        "interactions": {"login": 1, "consent": 1},
    }
