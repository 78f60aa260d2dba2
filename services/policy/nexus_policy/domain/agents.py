"""Agents: who they are, the most they may ask for, and their keys.

An agent key reads ``nxag_<key id>_<secret>``. The key id is public and finds
the stored record; only a SHA-256 digest of the whole key is stored, which is
enough for a random 256-bit secret (no password stretching needed), and the
digests are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from nexus_common import ValidationFailed

from .bindings import Bindings, validate_bindings

__all__ = [
    "AGENT_ID_PATTERN",
    "Agent",
    "AgentKey",
    "IssuedKey",
    "could_be_agent_id",
    "digest_key",
    "issue_key",
    "key_id_of",
    "validate_agent",
]

# Used with fullmatch: "$" alone would let a trailing newline through.
AGENT_ID_PATTERN = re.compile(r"[a-z0-9-]+")
_MAX_AGENT_ID = 63
_MAX_DESCRIPTION = 1024
_MAX_SCOPES = 100
_MAX_SCOPE = 256
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), as for providers.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_KEY_PREFIX = "nxag_"
_KEY_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class Agent:
    agent_id: str
    description: str
    allowed_scopes: tuple[str, ...]
    enabled: bool
    key_id: str
    created_at: datetime
    updated_at: datetime
    # None: unbound, and the deployment decides (see domain.access).
    bindings: Bindings | None
    # Sessions issued before this are over: the kill switch (disable, delete,
    # or a key rotation without grace) moves it.
    sessions_valid_after: datetime


@dataclass(frozen=True)
class AgentKey:
    """A stored key: its digest, never the key."""

    key_id: str
    agent_id: str
    digest: bytes
    created_at: datetime
    expires_at: datetime | None

    def usable_at(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at

    def matches(self, presented: str) -> bool:
        return hmac.compare_digest(self.digest, digest_key(presented))


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    key: str = field(repr=False)


def digest_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def issue_key() -> IssuedKey:
    key_id = secrets.token_hex(8)
    return IssuedKey(key_id, f"{_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}")


def key_id_of(presented: str) -> str | None:
    """The key id a presented key claims, or None when it is not shaped like one."""
    if not presented.startswith(_KEY_PREFIX):
        return None
    key_id, sep, secret = presented[len(_KEY_PREFIX) :].partition("_")
    return key_id if sep and secret and _KEY_ID.fullmatch(key_id) else None


def could_be_agent_id(value: str) -> bool:
    return len(value) <= _MAX_AGENT_ID and bool(AGENT_ID_PATTERN.fullmatch(value))


def validate_agent(
    agent_id: str,
    description: str,
    allowed_scopes: tuple[str, ...],
    bindings: Bindings | None = None,
) -> None:
    if not agent_id:
        raise ValidationFailed("agent_id is required", field="agent_id")
    if not could_be_agent_id(agent_id):
        raise ValidationFailed(
            f"agent_id must be 1-{_MAX_AGENT_ID} lower-case letters, digits or dashes",
            field="agent_id",
        )
    if len(description) > _MAX_DESCRIPTION:
        raise ValidationFailed(
            f"description must be at most {_MAX_DESCRIPTION} characters", field="description"
        )
    if "\x00" in description:
        # PostgreSQL text cannot hold NUL; refuse it on every database alike.
        raise ValidationFailed("description must not contain NUL", field="description")
    if not allowed_scopes:
        raise ValidationFailed(
            "allowed_scopes must name at least one scope", field="allowed_scopes"
        )
    if len(allowed_scopes) > _MAX_SCOPES:
        raise ValidationFailed(
            f"allowed_scopes may name at most {_MAX_SCOPES} scopes", field="allowed_scopes"
        )
    for scope in allowed_scopes:
        if not scope or len(scope) > _MAX_SCOPE or not _SCOPE_TOKEN.fullmatch(scope):
            raise ValidationFailed(
                f"each allowed scope must be an OAuth scope token of 1-{_MAX_SCOPE} "
                "characters: printable ASCII without spaces, quotes or backslashes",
                field="allowed_scopes",
            )
    if len(set(allowed_scopes)) != len(allowed_scopes):
        raise ValidationFailed("allowed_scopes lists a scope twice", field="allowed_scopes")
    if bindings is not None:
        validate_bindings(bindings)
