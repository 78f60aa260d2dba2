"""The MCP server as an OAuth resource server (MCP authorization spec, RFC 9728).

``ProtectedResource`` says what the server tells clients about itself; the
mcp SDK's own machinery (``AuthSettings``, its bearer middleware) then serves
``/.well-known/oauth-protected-resource<path>`` and answers a request without
a valid token with 401 and ``WWW-Authenticate: Bearer ... resource_metadata=``.

What the resource server checks itself, by default (``JwtTokenVerifier``): the
user's token is a JWT signed by a key in the authorization server's JWK Set,
with that issuer, this server's audience, a subject and an unexpired ``exp``.
The MCP spec requires a server to refuse tokens not issued for it, so an
unverifiable token never reaches a tool. Whether the user may do what a tool
does is not decided here: Nexus's backend (``BACKEND_AUTH_URL``) validates the
same token again when a tool opens an on-behalf-of session, and reports the
user's permissions. A deployer whose tokens are opaque plugs any mcp
``TokenVerifier`` instead (RFC 7662 introspection, say).

Such a verifier is not trusted to check the audience unless it says so: the
mcp bearer middleware then refuses every token whose ``AccessToken.resource``
(RFC 8707) is not this server's URL, so a verifier that only asks "is this a
valid token?" cannot admit a token issued for another resource. A verifier
that checks ``aud`` itself declares ``checks_audience = True``, as
``JwtTokenVerifier`` does.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings

__all__ = ["DEFAULT_ALGORITHMS", "JwtTokenVerifier", "ProtectedResource"]

logger = logging.getLogger("nexus_sdk.mcp")

# Asymmetric only: a shared-secret (HS*) key would let whoever verifies also mint.
DEFAULT_ALGORITHMS = ("ES256", "RS256", "EdDSA")
# An unknown key id may mean the authorization server rotated its keys; look
# again, but not on every forged token.
DEFAULT_JWKS_REFETCH_SECONDS = 30.0
CLOCK_LEEWAY_SECONDS = 30
# A JWK Set holds a few keys of a few hundred bytes; a larger body is refused
# unread rather than held in memory (as nexus_common's JwksVerifier).
MAX_JWKS_BYTES = 256 * 1024


@dataclass(frozen=True)
class ProtectedResource:
    """This MCP server as an OAuth protected resource.

    ``url`` is the MCP endpoint as clients reach it (``https://mcp.example.com/mcp``),
    the RFC 9728 ``resource``; ``authorization_server`` is the issuer of the
    users' tokens, named in the metadata so clients know where to get one.
    """

    url: str
    authorization_server: str

    def auth_settings(self, verifier: TokenVerifier | None = None) -> AuthSettings:
        """For ``MCPServer(auth=...)``. Tokens are held to this server's URL as
        their RFC 8707 resource unless ``verifier`` declares ``checks_audience``."""
        checks_audience = getattr(verifier, "checks_audience", False) is True
        return AuthSettings(
            issuer_url=self.authorization_server,  # type: ignore[arg-type]
            resource_server_url=self.url,  # type: ignore[arg-type]
            validate_token_resource=not checks_audience,
        )


class JwtTokenVerifier:
    """An mcp ``TokenVerifier`` for JWT access tokens, checked against the issuer's JWK Set.

    ``audience`` is what the tokens name as theirs (``aud``); the MCP spec
    expects this server's resource URL. The JWK Set is fetched with ``http``
    (an ``httpx.AsyncClient`` you own) or a client of our own, without
    following redirects; again when a token names a key it does not hold, at
    most every ``refetch_interval_seconds``. A body over ``MAX_JWKS_BYTES``
    is refused, and the keys held before are kept.
    """

    # It passes ``audience`` to the JWT check (RFC 7519 §4.1.3), so the mcp
    # middleware need not compare resource indicators, which JWTs rarely carry.
    checks_audience = True

    def __init__(
        self,
        *,
        issuer: str,
        jwks_url: str,
        audience: str,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        http: httpx.AsyncClient | None = None,
        timeout_seconds: float = 10.0,
        refetch_interval_seconds: float = DEFAULT_JWKS_REFETCH_SECONDS,
    ) -> None:
        if isinstance(algorithms, str) or any(alg.upper().startswith("HS") for alg in algorithms):
            raise ValueError("algorithms must be a list of asymmetric JWS algorithms")
        self.issuer = issuer
        self.jwks_url = jwks_url
        self.audience = audience
        self.algorithms = tuple(algorithms)
        self._http = http
        self._timeout = httpx.Timeout(timeout_seconds)
        self.refetch_interval_seconds = refetch_interval_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")

    async def verify_token(self, token: str) -> AccessToken | None:
        """The token's principal, or ``None`` (the middleware then answers 401)."""
        try:
            header = jwt.get_unverified_header(token)
            key = await self._key(header.get("kid"))
            if key is None:
                logger.info("bearer token refused: its key id is not in %s", self.jwks_url)
                return None
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=CLOCK_LEEWAY_SECONDS,
                options={"require": ["iss", "aud", "sub", "exp"]},
            )
        except jwt.PyJWTError as exc:
            # The class says why; the message might quote the token's content.
            logger.info("bearer token refused (%s)", type(exc).__name__)
            return None
        scope = claims.get("scope")
        return AccessToken(
            token=token,
            client_id=str(claims.get("client_id") or claims.get("azp") or claims["sub"]),
            scopes=scope.split() if isinstance(scope, str) else [],
            expires_at=int(claims["exp"]),
            subject=str(claims["sub"]),
            claims={"iss": claims["iss"]},
        )

    async def _key(self, kid: object) -> jwt.PyJWK | None:
        if not isinstance(kid, str):
            return None
        since = time.monotonic() - self._fetched_at
        if kid not in self._keys and since >= self.refetch_interval_seconds:
            await self._fetch()
        return self._keys.get(kid)

    async def _fetch(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            if self._http is not None:
                body = await self._read(self._http)
            else:
                async with httpx.AsyncClient(timeout=self._timeout) as http:
                    body = await self._read(http)
            published = json.loads(body)
            if not isinstance(published, dict):
                raise ValueError("a JWK Set is a JSON object")
            keys = jwt.PyJWKSet.from_dict(published).keys
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            # Keep the keys we had: a failed fetch must not log everyone out.
            logger.warning(
                "could not fetch the JWK Set at %s (%s)", self.jwks_url, type(exc).__name__
            )
            return
        self._keys = {key.key_id: key for key in keys if key.key_id}

    async def _read(self, http: httpx.AsyncClient) -> bytes:
        """The JWK Set's body, read no further than ``MAX_JWKS_BYTES``."""
        async with http.stream(
            "GET", self.jwks_url, timeout=self._timeout, follow_redirects=False
        ) as response:
            response.raise_for_status()
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("the JWK Set is larger than MAX_JWKS_BYTES")
        return bytes(body)

    def __repr__(self) -> str:
        return f"JwtTokenVerifier(issuer={self.issuer!r}, audience={self.audience!r})"
