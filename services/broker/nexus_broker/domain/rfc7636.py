"""RFC 7636 Proof Key for Code Exchange; only S256 (§4.2) is used."""

from __future__ import annotations

import base64
import hashlib
import secrets

__all__ = ["CODE_CHALLENGE_METHOD", "code_challenge", "new_code_verifier"]

CODE_CHALLENGE_METHOD = "S256"


def new_code_verifier() -> str:
    # §4.1: 43-128 characters of [A-Za-z0-9-._~]; 64 random bytes give 86.
    return secrets.token_urlsafe(64)


def code_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
