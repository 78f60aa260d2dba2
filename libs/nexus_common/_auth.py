"""Caller credentials: admin API keys and the internal service token.

Keys are compared as SHA-256 digests with ``hmac.compare_digest`` against
every configured key, so neither the time taken nor the answer tells which
part of a presented key was wrong.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from ._errors import Unauthenticated

__all__ = [
    "API_KEY_HEADER",
    "AUTHORIZATION_HEADER",
    "CALLER_HEADER",
    "INTERNAL_TOKEN_HEADER",
    "ApiKeySet",
    "Authenticator",
    "Caller",
    "admin_authenticator",
    "current_caller",
    "internal_authenticator",
]

API_KEY_HEADER = "x-api-key"
# Agents present their key as ``Authorization: Bearer <agent key>``.
AUTHORIZATION_HEADER = "authorization"
INTERNAL_TOKEN_HEADER = "x-nexus-internal-token"  # noqa: S105 - a header name
# Set by the gateway on internal calls so the broker can audit who acted.
CALLER_HEADER = "x-nexus-caller"


@dataclass(frozen=True)
class Caller:
    """Who is making the current call, e.g. ``Caller("admin", "ops")``."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    @classmethod
    def parse(cls, text: str) -> Caller:
        kind, _, name = text.partition(":")
        return cls(kind or "unknown", name or "unknown")


current_caller: ContextVar[Caller | None] = ContextVar("current_caller", default=None)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class ApiKeySet:
    """Named secret keys, e.g. admin API keys or the internal token."""

    def __init__(self, keys: dict[str, str]) -> None:
        if any(not key for key in keys.values()):
            raise ValueError("an API key may not be empty")
        self._digests = [(name, _digest(key)) for name, key in keys.items()]

    @classmethod
    def from_spec(cls, spec: str, *, min_length: int = 0) -> ApiKeySet:
        """Parse ``"name:key,other:key2"``; a bare key is named by its position.
        A key shorter than ``min_length`` is refused, by name (never the key)."""
        keys: dict[str, str] = {}
        for index, item in enumerate(filter(None, (p.strip() for p in spec.split(","))), 1):
            name, sep, key = item.partition(":")
            keys[name if sep else f"key{index}"] = key if sep else item
        for name, key in keys.items():
            if 0 < len(key) < min_length:
                raise ValueError(
                    f"the key named {name!r} has {len(key)} characters; at least"
                    f" {min_length} are needed"
                )
        return cls(keys)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __repr__(self) -> str:
        # Names only: even a key's digest would let a guess be checked offline.
        return f"ApiKeySet(names={[name for name, _ in self._digests]})"

    def match(self, presented: str | None) -> str:
        """Return the matching key's name, or raise Unauthenticated."""
        candidate = _digest(presented or "")
        matched: str | None = None
        for name, digest in self._digests:
            if hmac.compare_digest(candidate, digest) and presented:
                matched = name
        if matched is None:
            raise Unauthenticated("a valid API key is required")
        return matched


Authenticator = Callable[[str, Mapping[str, str]], Awaitable[Caller]]


def admin_authenticator(keys: ApiKeySet) -> Authenticator:
    """Admin API keys from ``x-api-key``; the same error for a missing or wrong key."""

    async def authenticate(method: str, metadata: Mapping[str, str]) -> Caller:
        return Caller("admin", keys.match(metadata.get(API_KEY_HEADER)))

    return authenticate


def internal_authenticator(tokens: ApiKeySet) -> Authenticator:
    """Service-to-service calls: the internal token, then the caller the
    gateway established (or the calling service itself)."""

    async def authenticate(method: str, metadata: Mapping[str, str]) -> Caller:
        service = tokens.match(metadata.get(INTERNAL_TOKEN_HEADER))
        on_behalf = metadata.get(CALLER_HEADER)
        return Caller.parse(on_behalf) if on_behalf else Caller("service", service)

    return authenticate
