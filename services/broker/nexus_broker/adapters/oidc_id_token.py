"""Verifying an OpenID Connect ID token (OIDC Core §3.1.3.7).

The issuer is pinned to the provider's, the signature must verify against
the provider's JWKS (fetched over HTTP and cached by ``nexus_common.JwksVerifier``,
which accepts asymmetric algorithms only), the audience must be our client_id,
and ``exp`` and ``nonce`` must hold.
"""

from __future__ import annotations

from typing import Any

import httpx
from nexus_common import JwksVerifier, JwtVerificationError

__all__ = ["IdTokenError", "IdTokenVerifier"]


class IdTokenError(Exception):
    """The ID token is not acceptable; the message says why, without its content."""


class IdTokenVerifier:
    def __init__(self, http: httpx.AsyncClient, *, min_refetch_seconds: float = 30.0) -> None:
        self._jwks = JwksVerifier(http, min_refetch_seconds=min_refetch_seconds)

    async def verify(
        self, token: str, *, issuer: str, jwks_uri: str, client_id: str, nonce: str | None
    ) -> dict[str, Any]:
        try:
            claims = await self._jwks.verify(
                token, jwks_uri=jwks_uri, issuer=issuer, audience=client_id
            )
        except JwtVerificationError as exc:
            raise IdTokenError(f"the ID token is not acceptable: {exc}") from exc
        if nonce is not None and claims.get("nonce") != nonce:
            raise IdTokenError("the ID token's nonce does not match this authorization")
        return claims
