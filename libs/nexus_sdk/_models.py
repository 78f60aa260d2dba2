"""What the gateway hands an agent: connection tokens and sessions.

Values only: no I/O. ``repr()`` leaves out every token and credential, so a
result can be logged or shown in a traceback without leaking it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AgentSession", "MalformedAnswer", "TokenPayload", "agent_session", "token_payload"]


class MalformedAnswer(ValueError):
    """A 2xx body that is not the documented shape; the client reports it as unexpected."""


def _expired(expires_at: int | None, now: float | None, leeway: float) -> bool:
    if expires_at is None:
        return False
    return (time.time() if now is None else now) + leeway >= expires_at


@dataclass(frozen=True)
class TokenPayload:
    """Credentials for calls to a provider through one connection (``GET /v1/token/{id}``).

    ``strategy["type"]`` says how to apply ``credentials``: ``oauth2`` (a
    Bearer ``access_token``), ``basic_auth`` (``username``/``password``) or
    ``api_key`` (the fields listed in ``strategy["fields"]``, each with where
    it goes). Never holds a refresh token.
    """

    strategy: dict[str, Any]
    credentials: dict[str, Any] = field(repr=False)
    # Unix seconds; None for credentials that do not expire.
    expires_at: int | None

    def expired(self, now: float | None = None, *, leeway: float = 0.0) -> bool:
        """Whether to fetch again: re-fetching with ``leeway=300`` (five minutes)
        before expiry is the documented safe habit. The broker keeps tokens
        fresh, so a new fetch is cheap."""
        return _expired(self.expires_at, now, leeway)


@dataclass(frozen=True)
class AgentSession:
    """A scoped grant to one agent for one provider (``POST /v1/agent-sessions``
    or ``/v1/obo-sessions``). Close it with ``close_agent_session(session_id)``
    when the work is done.

    ``access_token`` is what to send to the provider: the provider's token for
    OAuth providers, ``session_token`` itself for internal (``nexus``) ones.
    ``session_token`` is a JWT signed by Nexus (verify it with ``jwks()``).
    On-behalf-of sessions set ``acting_for``, ``tenant_id`` and
    ``clearance_level`` from the user's context, for the downstream service to
    enforce; they are empty strings otherwise.

    ``token_scopes`` is what ``access_token`` really carries: ``scopes``,
    unless the provider cannot narrow its tokens and is allowed to hand out
    broader ones, when it names the connection's whole grant.
    """

    session_id: str
    access_token: str = field(repr=False)
    token_type: str
    # Unix seconds; never later than the credential behind the session expires.
    expires_at: int
    scopes: tuple[str, ...]
    provider: str
    connection_id: str
    session_token: str = field(repr=False)
    agent_id: str
    acting_for: str
    tenant_id: str
    clearance_level: str
    token_scopes: tuple[str, ...] = ()

    def expired(self, now: float | None = None, *, leeway: float = 0.0) -> bool:
        """Whether the session has ended by time (``now`` defaults to the clock).
        A session closed early is not detected here: ask ``introspect_session``."""
        return _expired(self.expires_at, now, leeway)


def token_payload(body: Any) -> TokenPayload:
    data = _object(body)
    strategy = _object(data.get("strategy"))
    if not isinstance(strategy.get("type"), str):
        raise MalformedAnswer("strategy.type")
    expires_at = data.get("expires_at")
    return TokenPayload(
        strategy=dict(strategy),
        credentials=dict(_object(data.get("credentials"))),
        expires_at=None if expires_at is None else _unix_seconds(expires_at, "expires_at"),
    )


def agent_session(body: Any) -> AgentSession:
    data = _object(body)
    scopes = _texts(data, "scopes")
    return AgentSession(
        session_id=_text(data, "session_id", required=True),
        access_token=_text(data, "access_token", required=True),
        token_type=_text(data, "token_type"),
        expires_at=_unix_seconds(data.get("expires_at"), "expires_at"),
        scopes=scopes,
        provider=_text(data, "provider"),
        connection_id=_text(data, "connection_id"),
        session_token=_text(data, "session_token"),
        agent_id=_text(data, "agent_id"),
        acting_for=_text(data, "acting_for"),
        tenant_id=_text(data, "tenant_id"),
        clearance_level=_text(data, "clearance_level"),
        token_scopes=_texts(data, "token_scopes"),
    )


def _texts(data: Mapping[str, Any], name: str) -> tuple[str, ...]:
    values = data.get(name, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise MalformedAnswer(name)
    return tuple(values)


def _object(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise MalformedAnswer("expected a JSON object")
    return value


def _text(data: Mapping[str, Any], name: str, *, required: bool = False) -> str:
    value = data.get(name, "")
    if not isinstance(value, str) or (required and not value):
        raise MalformedAnswer(name)
    return value


def _unix_seconds(value: Any, name: str) -> int:
    # proto3 JSON prints 64-bit integers as strings; accept both spellings.
    if isinstance(value, bool):
        raise MalformedAnswer(name)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise MalformedAnswer(name)
