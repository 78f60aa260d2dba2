"""The broker's session-token signer: the current key, rotation and the JWK Set.

Keys live sealed in the database, so every broker replica signs with the same
key set and any replica can verify what another signed. Replicas racing to
make the first key of a period each make one; both are published, so either
verifies.

The JWK Set is served from memory. It is read again when this replica takes a
new signing key, when the current key retires or a published one expires (the
moments the set changes), and at the latest after ``jwks_cache_seconds``,
which bounds how long a key another replica made in the same instant stays
unseen. Callers may cache it for as long as it stays fresh here.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt

from ..domain.signing import ALGORITHM, SigningKey, new_signing_key, public_jwk
from .unit_of_work import BrokerUnitOfWork

__all__ = ["JwkSet", "SessionSigner"]


@dataclass(frozen=True)
class JwkSet:
    document: dict[str, Any]
    fresh_until: datetime

    def max_age_seconds(self, now: datetime) -> int:
        """Whole seconds a cache may keep this set, rounded down."""
        return max(0, math.floor((self.fresh_until - now).total_seconds()))


class SessionSigner:
    def __init__(
        self,
        uow: Callable[[], BrokerUnitOfWork],
        *,
        rotation: timedelta,
        longest_session: timedelta,
        jwks_cache: timedelta = timedelta(seconds=60),
    ) -> None:
        self._uow = uow
        self._rotation = rotation
        self._longest_session = longest_session
        self._jwks_cache = jwks_cache
        self._jwk_set: JwkSet | None = None
        self._current: SigningKey | None = None
        # Keys unsealed before, by kid: the JWK Set and every introspection
        # read the published keys, and unsealing them each time is wasted work.
        self._opened: dict[str, SigningKey] = {}
        self._lock = asyncio.Lock()

    async def current(self, now: datetime) -> SigningKey:
        """The key to sign with now, made when none is within its signing period."""
        key = self._current
        if key is not None and key.signs_at(now):
            return key
        async with self._lock:
            key = self._current
            if key is not None and key.signs_at(now):
                return key
            async with self._uow() as uow:
                usable = [
                    k
                    for k in await uow.signing_keys.published(now, self._opened)
                    if k.signs_at(now)
                ]
                if usable:
                    key = usable[0]
                else:
                    key = new_signing_key(now, self._rotation, self._longest_session)
                    await uow.signing_keys.add(key)
                    await uow.commit()
            if self._current is None or self._current.kid != key.kid:
                self._jwk_set = None
            self._current = key
            return key

    async def published(self, now: datetime) -> list[SigningKey]:
        await self.current(now)
        async with self._uow() as uow:
            keys = await uow.signing_keys.published(now, self._opened)
        self._opened = {key.kid: key for key in keys}
        return keys

    async def jwks(self, now: datetime) -> JwkSet:
        """The published keys as a JWK Set, from memory while it is fresh."""
        cached = self._jwk_set
        if cached is not None and now < cached.fresh_until:
            return cached
        keys = await self.published(now)
        current = await self.current(now)
        fresh_until = min(
            [now + self._jwks_cache, current.retire_at, *(key.expires_at for key in keys)]
        )
        jwk_set = JwkSet({"keys": [public_jwk(key) for key in keys]}, fresh_until)
        self._jwk_set = jwk_set
        return jwk_set

    async def verify(self, token: str, issuer: str, now: datetime) -> dict[str, Any] | None:
        """The token's claims when a published key signed it and it has not
        expired; None otherwise (the caller only learns "not active")."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return None
        key = next((k for k in await self.published(now) if k.kid == kid), None)
        if key is None:
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.private_key.public_key(),
                algorithms=[ALGORITHM],
                issuer=issuer,
                options={"verify_aud": False, "require": ["exp", "iat", "jti", "sub", "iss"]},
            )
        except jwt.PyJWTError:
            return None
        return claims
