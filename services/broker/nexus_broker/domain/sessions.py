"""Agent sessions: least-privilege grants, and the JWT that describes each one.

A session token follows RFC 9068 (JWT access tokens): ``typ`` is ``at+jwt``;
``sub`` is the agent, or for an on-behalf-of session the user, with the agent
in an RFC 8693 ``act`` claim; ``aud`` is the provider; ``jti`` is the session id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from nexus_common import ValidationFailed

__all__ = [
    "NarrowedToken",
    "Session",
    "SessionKind",
    "SessionLimits",
    "UserStamp",
    "is_uuid",
    "scopes_beyond",
    "session_claims",
    "validate_request",
]

_MAX_ID = 255


class SessionKind:
    AGENT = "agent"
    OBO = "obo"


@dataclass(frozen=True)
class SessionLimits:
    default_ttl_seconds: int
    max_ttl_seconds: int

    def ttl(self, requested: int | None) -> timedelta:
        if requested is None:
            return timedelta(seconds=min(self.default_ttl_seconds, self.max_ttl_seconds))
        if not 1 <= requested <= self.max_ttl_seconds:
            raise ValidationFailed(
                f"ttl_seconds must be between 1 and {self.max_ttl_seconds}", field="ttl_seconds"
            )
        return timedelta(seconds=requested)


@dataclass(frozen=True)
class UserStamp:
    """Who an on-behalf-of session acts for, as the customer's backend said."""

    user_id: str
    tenant_id: str
    clearance_level: str


@dataclass(frozen=True)
class Session:
    kind: str
    agent_id: str
    provider_id: str
    provider_name: str
    connection_id: str | None
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    user: UserStamp | None = None
    closed_at: datetime | None = None
    # The shared narrowed token this session handed out, if it handed out one.
    narrowed_token_id: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def active_at(self, now: datetime) -> bool:
        return self.closed_at is None and now < self.expires_at


@dataclass(frozen=True)
class NarrowedToken:
    """A provider token carrying only some of a connection's scopes, shared by
    one agent's sessions that ask for the same scopes until it nears expiry."""

    connection_id: str
    agent_id: str
    access_token: str = field(repr=False)
    created_at: datetime
    expires_at: datetime | None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def usable_for(
        self, lifetime: timedelta, now: datetime, not_before: datetime | None, skew: timedelta
    ) -> bool:
        """Good for a session of ``lifetime``, or, when the session would
        outlive it, for more than ``skew``: the session then ends with the token
        (a new narrowing for each long session would be a provider call each).
        Never one minted before the agent's sessions were last ended, nor one
        whose expiry the provider did not say: nothing tells when it stops working."""
        if not_before is not None and self.created_at < not_before:
            return False
        return self.expires_at is not None and self.expires_at - now > min(lifetime, skew)


def scopes_beyond(asked: tuple[str, ...], answered: tuple[str, ...]) -> tuple[str, ...]:
    """What a token answer grants beyond the scopes asked. RFC 6749 §5.1: an
    answer without ``scope`` granted what was asked; §3.3: the server may
    grant otherwise, so a provider that ignores a narrower ask says so here."""
    return tuple(sorted(set(answered) - set(asked)))


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def validate_request(
    agent_id: str, provider: str, scopes: list[str], connection_id: str, workspace_id: str
) -> None:
    """What can be checked before asking anyone."""
    for name, value in (("agent_id", agent_id), ("provider", provider)):
        if not value:
            raise ValidationFailed(f"{name} is required", field=name)
        if len(value) > _MAX_ID:
            raise ValidationFailed(f"{name} is too long", field=name)
    if not scopes:
        raise ValidationFailed("scopes must name at least one scope", field="scopes")
    if any(not scope.strip() for scope in scopes):
        raise ValidationFailed("scopes must not contain an empty scope", field="scopes")
    if connection_id and not is_uuid(connection_id):
        raise ValidationFailed("connection_id is not a valid id", field="connection_id")
    if len(workspace_id) > _MAX_ID:
        raise ValidationFailed("workspace_id is too long", field="workspace_id")


def session_claims(session: Session, issuer: str) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": session.agent_id,
        "aud": session.provider_name,
        "iat": int(session.created_at.timestamp()),
        "nbf": int(session.created_at.timestamp()),
        "exp": int(session.expires_at.timestamp()),
        "jti": session.id,
        "client_id": session.agent_id,
        "scope": " ".join(session.scopes),
        "session_type": session.kind,
    }
    if session.connection_id:
        claims["connection_id"] = session.connection_id
    if session.user is not None:
        claims["sub"] = session.user.user_id
        claims["act"] = {"sub": session.agent_id}
        claims["acting_for"] = session.user.user_id
        claims["tenant_id"] = session.user.tenant_id
        claims["clearance_level"] = session.user.clearance_level
    return claims
