"""Verifying an OpenID Connect ID token (OIDC Core §3.1.3.7).

The issuer is pinned to the provider's, the signature must verify against
the provider's JWKS (fetched over HTTP and cached), the audience must be our
client_id, and ``exp`` and ``nonce`` must hold. Only asymmetric algorithms are
accepted, so a token cannot be forged with the public key as an HMAC secret.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt

__all__ = ["IdTokenError", "IdTokenVerifier"]

_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
_JWKS_TTL_SECONDS = 600.0
_LEEWAY_SECONDS = 60


class IdTokenError(Exception):
    """The ID token is not acceptable; the message says why, without its content."""


class IdTokenVerifier:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http
        self._jwks: dict[str, tuple[float, jwt.PyJWKSet]] = {}

    async def _key_set(self, jwks_uri: str, refresh: bool) -> jwt.PyJWKSet:
        cached = self._jwks.get(jwks_uri)
        if cached is not None and not refresh and time.monotonic() - cached[0] < _JWKS_TTL_SECONDS:
            return cached[1]
        try:
            response = await self._http.get(jwks_uri, headers={"Accept": "application/json"})
            response.raise_for_status()
            key_set = jwt.PyJWKSet.from_dict(response.json())
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            raise IdTokenError("the provider's signing keys could not be fetched") from exc
        self._jwks[jwks_uri] = (time.monotonic(), key_set)
        return key_set

    async def _signing_key(self, token: str, jwks_uri: str) -> Any:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise IdTokenError("the ID token is malformed") from exc
        for refresh in (False, True):  # a new kid may mean the provider rotated keys
            key_set = await self._key_set(jwks_uri, refresh)
            for key in key_set.keys:
                if kid is None or key.key_id == kid:
                    return key
        raise IdTokenError("the ID token is signed with a key the provider does not publish")

    async def verify(
        self, token: str, *, issuer: str, jwks_uri: str, client_id: str, nonce: str | None
    ) -> dict[str, Any]:
        key = await self._signing_key(token, jwks_uri)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=_ALGORITHMS,
                audience=client_id,
                issuer=issuer,
                leeway=_LEEWAY_SECONDS,
                options={"require": ["iss", "aud", "exp", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise IdTokenError(f"the ID token is not valid ({type(exc).__name__})") from exc
        if nonce is not None and claims.get("nonce") != nonce:
            raise IdTokenError("the ID token's nonce does not match this authorization")
        return claims
