"""Caller credentials: admin API keys, resource-server keys, the internal
service token, and the service a verified client certificate names.

Keys are compared as SHA-256 digests with ``hmac.compare_digest`` against
every configured key, so neither the time taken nor the answer tells which
part of a presented key was wrong.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ._errors import CallerProofInvalid, ServiceIdentityRequired, Unauthenticated
from ._service_access import CALLER_ASSERTING, check_service_call

if TYPE_CHECKING:
    from ._caller_proof import CallerProofs

__all__ = [
    "API_KEY_HEADER",
    "AUTHORIZATION_HEADER",
    "CALLER_HEADER",
    "CALLER_PROOF_HEADER",
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
# Set by the gateway on internal calls so the broker can audit who acted;
# believed only with the gateway's proof (``_caller_proof``).
CALLER_HEADER = "x-nexus-caller"
CALLER_PROOF_HEADER = "x-nexus-caller-proof"


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
    """Named secret keys, e.g. admin API keys or the internal token. Several
    keys may share a name (given as pairs): a key being rotated and its successor."""

    def __init__(self, keys: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        pairs = list(keys.items() if isinstance(keys, Mapping) else keys)
        if any(not key for _, key in pairs):
            raise ValueError("an API key may not be empty")
        self._digests = [(name, _digest(key)) for name, key in pairs]

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

    def find(self, presented: str | None) -> str | None:
        """The matching key's name, else None; every key is compared."""
        candidate = _digest(presented or "")
        matched: str | None = None
        for name, digest in self._digests:
            if hmac.compare_digest(candidate, digest) and presented:
                matched = name
        return matched

    def match(self, presented: str | None) -> str:
        """Return the matching key's name, or raise Unauthenticated."""
        matched = self.find(presented)
        if matched is None:
            raise Unauthenticated("a valid API key is required")
        return matched


class Authenticator(Protocol):
    """Who makes a call to ``method``. ``peer`` is the service the client's
    verified certificate names (mutual TLS), else None."""

    def __call__(
        self, method: str, metadata: Mapping[str, str], peer: str | None = None
    ) -> Awaitable[Caller]: ...


def admin_authenticator(keys: ApiKeySet) -> Authenticator:
    """Admin API keys from ``x-api-key``; the same error for a missing or wrong key."""

    async def authenticate(
        method: str, metadata: Mapping[str, str], peer: str | None = None
    ) -> Caller:
        return Caller("admin", keys.match(metadata.get(API_KEY_HEADER)))

    return authenticate


def internal_authenticator(
    tokens: ApiKeySet, proofs: CallerProofs | None = None, *, mutual_tls: bool = False
) -> Authenticator:
    """Service-to-service calls: the internal token; with ``mutual_tls``, a
    certificate naming a service allowed this method; then the caller the
    gateway established and proved, or else the calling service itself.
    Without ``proofs`` no call may name a caller."""

    async def authenticate(
        method: str, metadata: Mapping[str, str], peer: str | None = None
    ) -> Caller:
        token_name = tokens.match(metadata.get(INTERNAL_TOKEN_HEADER))
        if mutual_tls:
            if peer is None:
                raise ServiceIdentityRequired(
                    "the client certificate names no Nexus service (spiffe://nexus/<service>)"
                )
            check_service_call(peer, method)
        claimed = metadata.get(CALLER_HEADER)
        if claimed is None:
            return Caller("service", peer or token_name)
        if proofs is None or (mutual_tls and peer not in CALLER_ASSERTING):
            raise CallerProofInvalid(f"the {peer or 'calling'} service may not name a caller")
        return proofs.verify(claimed, method, metadata.get(CALLER_PROOF_HEADER))

    return authenticate
