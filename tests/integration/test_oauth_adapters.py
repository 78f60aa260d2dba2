"""The OAuth adapters against real servers: the npm OIDC provider for ID
tokens, and a real HTTP server for token-endpoint dialects it does not speak."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from nexus_broker.adapters.oidc_id_token import IdTokenError, IdTokenVerifier
from nexus_broker.adapters.rfc6749 import ClientCredentials, TokenEndpoint, TokenEndpointError
from nexus_broker.domain.rfc7636 import code_challenge, new_code_verifier

from tests.support.oidc_server import OidcServer

CLIENT = ClientCredentials("nexus-client", "s3cret", "client_secret_basic")
NOW = datetime.now(UTC)


async def _real_id_token(oidc: OidcServer, nonce: str) -> str:
    verifier = new_code_verifier()
    async with httpx.AsyncClient() as http:
        authorize = await http.get(
            f"{oidc.issuer}/authorize",
            params={
                "client_id": "nexus-client",
                "redirect_uri": "http://127.0.0.1/cb",
                "response_type": "code",
                "scope": "openid",
                "nonce": nonce,
                "code_challenge": code_challenge(verifier),
                "code_challenge_method": "S256",
            },
        )
        code = parse_qs(urlsplit(authorize.headers["location"]).query)["code"][0]
        _, id_token = await TokenEndpoint(http).exchange_code(
            f"{oidc.issuer}/token",
            CLIENT,
            code=code,
            redirect_uri="http://127.0.0.1/cb",
            code_verifier=verifier,
            scopes=("openid",),
            now=NOW,
        )
    assert id_token is not None
    return id_token


@pytest.mark.parametrize(
    ("changes", "accepted"),
    [
        ({}, True),
        ({"nonce": "another-nonce"}, False),
        ({"client_id": "someone-else"}, False),
        ({"issuer": "https://impostor.example"}, False),
    ],
)
async def test_id_tokens_are_checked_for_issuer_audience_signature_and_nonce(
    oidc: OidcServer, changes: dict[str, str], accepted: bool
) -> None:
    id_token = await _real_id_token(oidc, nonce="n-123")
    expected = {"issuer": oidc.issuer, "client_id": "nexus-client", "nonce": "n-123", **changes}
    async with httpx.AsyncClient() as http:
        verifier = IdTokenVerifier(http)
        verify = verifier.verify(id_token, jwks_uri=f"{oidc.issuer}/jwks", **expected)
        if accepted:
            assert (await verify)["sub"] == "johndoe"
        else:
            with pytest.raises(IdTokenError):
                await verify
        forged = id_token[:-4] + ("AAAA" if not id_token.endswith("AAAA") else "BBBB")
        with pytest.raises(IdTokenError):
            await verifier.verify(
                forged,
                jwks_uri=f"{oidc.issuer}/jwks",
                issuer=oidc.issuer,
                client_id="nexus-client",
                nonce="n-123",
            )


class _Dialect(BaseHTTPRequestHandler):
    """A token endpoint that answers as told by the request's refresh_token."""

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        mode = form.get("refresh_token", ["form"])[0]
        answers = {
            "form": (
                200,
                "application/x-www-form-urlencoded",
                b"access_token=gho_abc&token_type=bearer&scope=repo%20user",
            ),
            "rate_limited": (429, "application/json", b'{"error":"slow_down"}'),
            "invalid_grant": (
                400,
                "application/json",
                b'{"error":"invalid_grant","error_description":"secret-leak"}',
            ),
        }
        status, content_type, body = answers[mode]
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if status == 429:
            self.send_header("Retry-After", "120")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def dialect_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Dialect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
    server.shutdown()
    server.server_close()


async def test_form_encoded_token_responses_are_understood(dialect_url: str) -> None:
    async with httpx.AsyncClient() as http:
        tokens = await TokenEndpoint(http).refresh(
            dialect_url, CLIENT, refresh_token="form", scopes=None, now=NOW
        )
    assert tokens.access_token == "gho_abc" and tokens.scope == ("repo", "user")
    assert tokens.expires_at is None and tokens.refresh_token is None


async def test_rate_limits_are_transient_with_retry_after(dialect_url: str) -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(TokenEndpointError) as caught:
            await TokenEndpoint(http).refresh(
                dialect_url, CLIENT, refresh_token="rate_limited", scopes=None, now=NOW
            )
    assert caught.value.transient and caught.value.retry_after == 120


async def test_invalid_grant_is_permanent_and_never_quotes_the_provider(dialect_url: str) -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(TokenEndpointError) as caught:
            await TokenEndpoint(http).refresh(
                dialect_url, CLIENT, refresh_token="invalid_grant", scopes=None, now=NOW
            )
    assert not caught.value.transient and caught.value.error == "invalid_grant"
    assert "secret-leak" not in caught.value.message
