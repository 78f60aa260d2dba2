"""Verifying a signed JWT (RFC 7519) against an issuer's JSON Web Key Set (RFC 7517 §5).

The key set is fetched over HTTP and cached per URI for ``ttl_seconds``. A token
whose ``kid`` is not in the cached set causes one refetch, because the issuer
may have rotated its keys since, but no sooner than ``min_refetch_seconds``
after the last fetch of that URI: otherwise anyone could make Nexus fetch the
key set once per forged token. Concurrent refetches of one URI share a
request. Only asymmetric algorithms are accepted and each is bound to its key
type (RFC 8725 §3.1), so a published public key can never serve as an HMAC
secret. Messages say why a token failed and never quote the token or the
issuer's response.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from ._outbound import OutboundRefused, parse_json

__all__ = ["JwksUnavailable", "JwksVerifier", "JwtVerificationError"]

# Accepted signature algorithms (RFC 7518 §3.1, RFC 8037) and the JWK key type each needs.
_KEY_TYPES = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
}
_ALGORITHMS = list(_KEY_TYPES)
_MAX_JWKS_BYTES = 256 * 1024
_INVALID_TOKEN_MESSAGES: dict[type[jwt.PyJWTError], str] = {
    jwt.ExpiredSignatureError: "the token has expired",
    jwt.ImmatureSignatureError: "the token is not valid yet",
    jwt.InvalidAudienceError: "the token is meant for another audience",
    jwt.InvalidIssuerError: "the token was issued by another issuer",
    jwt.InvalidSignatureError: "the token's signature does not verify",
}


class JwtVerificationError(Exception):
    """The token is not acceptable; the message says why, never what it holds."""


class JwksUnavailable(JwtVerificationError):
    """The issuer's key set could not be fetched, so nothing could be verified."""


@dataclass(frozen=True)
class _Key:
    kid: str | None
    algorithm: str | None  # the JWK's own "alg", which then binds it
    key_type: str
    public_key: Any


@dataclass(frozen=True)
class _KeySet:
    fetched_at: float
    keys: tuple[_Key, ...]


def _signing_keys(document: Any) -> tuple[_Key, ...]:
    """The usable signature keys of a JWKS document; unusable entries are skipped (§5)."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksUnavailable("the issuer's key set is not a JWKS document")
    keys: list[_Key] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kty, alg, kid = entry.get("kty"), entry.get("alg"), entry.get("kid")
        if not isinstance(kty, str) or kty not in _KEY_TYPES.values():
            continue
        # Tested against the list, not the dict: a JSON "alg" may be unhashable.
        if (alg is not None and alg not in _ALGORITHMS) or entry.get("use", "sig") != "sig":
            continue
        try:
            parsed = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
        keys.append(
            _Key(
                kid=kid if isinstance(kid, str) else None,
                algorithm=alg,
                key_type=kty,
                public_key=parsed.key,
            )
        )
    if not keys:
        raise JwksUnavailable("the issuer publishes no usable signing key")
    return tuple(keys)


def _choose(keys: Sequence[_Key], kid: str | None, algorithm: str) -> _Key | None:
    candidates = [
        key
        for key in keys
        if key.key_type == _KEY_TYPES[algorithm]
        and key.algorithm in (None, algorithm)
        and (kid is None or key.kid == kid)
    ]
    if kid is None and len(candidates) > 1:
        # OpenID Connect Core §10.1: with several keys published, kid is required.
        raise JwtVerificationError("the token names no key id and the issuer has several keys")
    return candidates[0] if candidates else None


class JwksVerifier:
    """Verifies JWTs against the key sets of their issuers, caching each key set."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        ttl_seconds: float = 600.0,
        timeout_seconds: float | None = None,
        min_refetch_seconds: float = 30.0,
    ) -> None:
        self._http = http
        self._ttl = ttl_seconds
        self._min_refetch = min_refetch_seconds
        self._timeout = http.timeout if timeout_seconds is None else httpx.Timeout(timeout_seconds)
        self._cache: dict[str, _KeySet] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Monotonic time of the last fetch attempt per URI, failed ones included.
        self._attempted: dict[str, float] = {}

    async def verify(
        self,
        token: str,
        *,
        jwks_uri: str,
        issuer: str,
        audience: str,
        leeway_seconds: float = 60.0,
        require: Sequence[str] = ("iss", "aud", "exp", "sub"),
    ) -> dict[str, Any]:
        """The token's claims once its signature, issuer, audience and times hold.

        Raises ``JwksUnavailable`` when the key set cannot be fetched and
        ``JwtVerificationError`` when the token itself is not acceptable.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise JwtVerificationError("the token is not a well-formed JWT") from exc
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in _ALGORITHMS:  # the list again: a header value may be unhashable
            raise JwtVerificationError("the token is signed with an algorithm that is not accepted")
        if kid is not None and not isinstance(kid, str):
            raise JwtVerificationError("the token's key id is not a string")
        key_set = await self._key_set(jwks_uri)
        key = _choose(key_set.keys, kid, algorithm)
        if key is None:
            key = _choose((await self._key_set(jwks_uri, stale=key_set)).keys, kid, algorithm)
        if key is None:
            raise JwtVerificationError("the token is signed with a key the issuer does not publish")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public_key,
                algorithms=[algorithm],
                audience=audience,
                issuer=issuer,
                leeway=leeway_seconds,
                options={"require": list(require)},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise JwtVerificationError(f"the token lacks the {exc.claim!r} claim") from exc
        except jwt.PyJWTError as exc:
            message = _INVALID_TOKEN_MESSAGES.get(type(exc), "the token is not valid")
            raise JwtVerificationError(f"{message} ({type(exc).__name__})") from exc
        return claims

    async def _key_set(self, jwks_uri: str, stale: _KeySet | None = None) -> _KeySet:
        """The cached key set, fetched when missing, expired or still the ``stale``
        one; a ``stale`` set is kept while the last fetch is under the minimum interval."""
        async with self._locks.setdefault(jwks_uri, asyncio.Lock()):
            cached = self._cache.get(jwks_uri)
            now = time.monotonic()
            if cached is not None and now - cached.fetched_at < self._ttl:
                if cached is not stale:
                    return cached
                if now - self._attempted.get(jwks_uri, 0.0) < self._min_refetch:
                    return cached
            self._attempted[jwks_uri] = now
            fetched = _KeySet(time.monotonic(), _signing_keys(await self._fetch(jwks_uri)))
            self._cache[jwks_uri] = fetched
            return fetched

    async def _fetch(self, jwks_uri: str) -> Any:
        try:
            async with self._http.stream(
                "GET", jwks_uri, headers={"Accept": "application/json"}, timeout=self._timeout
            ) as response:
                if response.status_code != 200:
                    raise JwksUnavailable(
                        f"the issuer's key set answered HTTP {response.status_code}"
                    )
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > _MAX_JWKS_BYTES:
                        raise JwksUnavailable("the issuer's key set is larger than 256 KiB")
        except OutboundRefused as exc:
            raise JwksUnavailable(f"the issuer's key set was not fetched: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise JwksUnavailable("the issuer's key set did not arrive in time") from exc
        except httpx.HTTPError as exc:
            raise JwksUnavailable(
                f"the issuer's key set could not be fetched ({type(exc).__name__})"
            ) from exc
        try:
            return parse_json(body)
        except ValueError as exc:
            raise JwksUnavailable("the issuer's key set is not valid JSON") from exc
