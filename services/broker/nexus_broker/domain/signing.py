"""Keys that sign session tokens, and their rotation.

A key signs for ``rotation`` after it is made, then retires; it stays in the
published JWK Set until every token it signed has expired. Only ES256 is
used, and verification accepts only it, so no token can choose its algorithm.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["ALGORITHM", "SigningKey", "new_signing_key", "public_jwk"]

ALGORITHM = "ES256"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    created_at: datetime
    retire_at: datetime
    expires_at: datetime

    def signs_at(self, now: datetime) -> bool:
        return self.created_at <= now < self.retire_at

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(
            claims,
            self.private_key,
            algorithm=ALGORITHM,
            headers={"kid": self.kid, "typ": "at+jwt"},
        )


def new_signing_key(now: datetime, rotation: timedelta, longest_session: timedelta) -> SigningKey:
    retire_at = now + rotation
    return SigningKey(
        kid=uuid.uuid4().hex,
        private_key=ec.generate_private_key(ec.SECP256R1()),
        created_at=now,
        retire_at=retire_at,
        # A token signed just before retirement lives this long; a minute covers clock skew.
        expires_at=retire_at + longest_session + timedelta(minutes=1),
    )


def public_jwk(key: SigningKey) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(
        jwt.algorithms.ECAlgorithm.to_jwk(key.private_key.public_key())
    )
    return jwk | {"kid": key.kid, "alg": ALGORITHM, "use": "sig"}
