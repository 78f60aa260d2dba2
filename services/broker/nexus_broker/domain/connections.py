"""Connections: their lifecycle, the tokens they hold, and when to refresh.

pending ──callback ok──▶ active ──invalid_grant──▶ attention
   │ │                      │                       │
   │ │                      └───────revoke──────────┴──▶ revoked
   │ ├─callback ok, confirmation asked──▶ unconfirmed ──confirmed──▶ active
   │ │                                        └─(not confirmed in time)─▶ expired
   │ └─provider error──▶ failed
   └─(not finished in time)▶ expired
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

__all__ = [
    "MAX_TOKEN_LIFETIME",
    "Connection",
    "ConnectionStatus",
    "Lease",
    "RefreshPolicy",
    "TokenSet",
    "token_lifetime",
]

# A longer expires_in is read as this: the token is then refreshed early,
# which is harmless, and every expiry stays a date Python and PostgreSQL hold.
MAX_TOKEN_LIFETIME = timedelta(days=100 * 365)
# expires_in as form-encoded providers (and some JSON ones) send it: a
# non-negative decimal number; "inf", "NaN" and "0x10" are not lifetimes.
_DECIMAL_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def token_lifetime(expires_in: object) -> timedelta | None:
    """RFC 6749 §5.1 ``expires_in`` as a lifetime, None when not given, capped
    at ``MAX_TOKEN_LIFETIME``. Raises ValueError for what is not a lifetime:
    a negative number, NaN, a boolean or text that is not a decimal number."""
    if expires_in is None or expires_in == "":
        return None
    if isinstance(expires_in, bool):
        raise ValueError("expires_in is a boolean")
    if isinstance(expires_in, str):
        if not _DECIMAL_SECONDS.fullmatch(expires_in.strip()):
            raise ValueError("expires_in is not a decimal number")
        expires_in = float(expires_in)
    if not isinstance(expires_in, int | float) or expires_in < 0:
        raise ValueError("expires_in is not a non-negative number")
    if isinstance(expires_in, float) and math.isnan(expires_in):
        raise ValueError("expires_in is NaN")
    # Capped before any conversion: a 400-digit integer overflows float(), and
    # a literal such as 1e400 reads as infinity, a very long lifetime.
    return timedelta(seconds=min(expires_in, MAX_TOKEN_LIFETIME.total_seconds()))


class ConnectionStatus:
    PENDING = "pending"
    # Completed, with its credentials sealed, but unusable until the app that
    # asked for it confirms it (ConfirmConnection).
    UNCONFIRMED = "unconfirmed"
    ACTIVE = "active"
    ATTENTION = "attention"
    FAILED = "failed"
    REVOKED = "revoked"
    EXPIRED = "expired"


@dataclass(frozen=True)
class TokenSet:
    """What an OAuth token endpoint granted (RFC 6749 §5.1)."""

    access_token: str = field(repr=False)
    token_type: str = "Bearer"  # noqa: S105 - a scheme name
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None
    scope: tuple[str, ...] = ()

    def after_refresh(self, fresh: TokenSet) -> TokenSet:
        """RFC 6749 §6: a provider may omit the refresh token from a refresh
        response, in which case the old one stays valid and must be kept; an
        omitted scope is the scope granted before (§5.1)."""
        return replace(
            fresh,
            refresh_token=fresh.refresh_token or self.refresh_token,
            scope=fresh.scope or self.scope,
        )

    def expires_within(self, now: datetime, seconds: float) -> bool:
        return self.expires_at is not None and self.expires_at - now <= timedelta(seconds=seconds)


@dataclass(frozen=True)
class Connection:
    id: str
    workspace_id: str
    provider_id: str
    scopes: tuple[str, ...]
    return_url: str
    status: str
    created_at: datetime
    updated_at: datetime
    pending_until: datetime | None = None
    token_expires_at: datetime | None = None
    last_refreshed_at: datetime | None = None
    next_refresh_at: datetime | None = None
    refresh_failures: int = 0
    last_error: str = ""
    # The app's tenant of the workspace: only its users reach it on their behalf.
    tenant_id: str = ""
    # The last refresh grant asking for fewer scopes (a session's narrowed token).
    last_narrowed_at: datetime | None = None

    def granted_scopes(self, tokens: TokenSet | None) -> tuple[str, ...]:
        """What the provider granted; RFC 6749 §5.1: a token response without
        ``scope`` granted what was asked."""
        return (tokens.scope if tokens is not None else ()) or self.scopes

    def status_at(self, now: datetime) -> str:
        """A pending or unconfirmed connection whose time ran out reads as expired."""
        if (
            self.status in (ConnectionStatus.PENDING, ConnectionStatus.UNCONFIRMED)
            and self.pending_until is not None
            and now >= self.pending_until
        ):
            return ConnectionStatus.EXPIRED
        return self.status


@dataclass(frozen=True)
class Lease:
    """One broker's right to refresh (or revoke) one connection until ``until``.

    ``fence`` is drawn afresh for every claim and stored on the row. A write
    made under the lease counts only while the row still carries this fence,
    so a holder whose lease lapsed and was claimed again can no longer
    overwrite what the next holder stored."""

    connection_id: str
    fence: str
    until: datetime


@dataclass(frozen=True)
class RefreshPolicy:
    """When to refresh, and how to back off when the provider is failing."""

    lead_seconds: float = 300.0
    jitter_seconds: float = 30.0
    # A token this close to expiry is refreshed before it is handed out.
    expiry_skew_seconds: float = 30.0
    min_backoff_seconds: float = 5.0
    max_backoff_seconds: float = 900.0
    # At most one forced refresh, and one narrowing, per connection in this
    # window, whoever asks.
    forced_interval_seconds: float = 30.0

    def forced_refresh_wait(self, connection: Connection, now: datetime) -> timedelta | None:
        """How long a forced refresh must wait, or None when it may go ahead:
        a token refreshed moments ago is fresh, and a failing provider keeps
        its backoff whoever asks."""
        return self._wait(connection.last_refreshed_at, connection, now)

    def narrowing_wait(self, connection: Connection, now: datetime) -> timedelta | None:
        """How long a refresh grant for a narrowed token must wait: as a forced
        refresh, it is a provider call that callers could otherwise make at will."""
        return self._wait(connection.last_narrowed_at, connection, now)

    def _wait(
        self, last: datetime | None, connection: Connection, now: datetime
    ) -> timedelta | None:
        waits = []
        if last is not None:
            waits.append(last + timedelta(seconds=self.forced_interval_seconds) - now)
        if connection.refresh_failures and connection.next_refresh_at is not None:
            waits.append(connection.next_refresh_at - now)
        wait = max(waits, default=timedelta(0))
        return wait if wait > timedelta(0) else None

    def next_refresh(self, tokens: TokenSet, now: datetime, random: float) -> datetime | None:
        """Ahead of expiry by the lead time, spread by jitter so that tokens
        issued together are not refreshed together. None: nothing to refresh."""
        if tokens.expires_at is None or not tokens.refresh_token:
            return None
        lifetime = (tokens.expires_at - now).total_seconds()
        # Short-lived tokens refresh at half-life rather than immediately.
        lead = min(self.lead_seconds, lifetime / 2)
        jitter = min(self.jitter_seconds, lead / 2) * random
        return max(now, tokens.expires_at - timedelta(seconds=lead + jitter))

    def backoff(self, failures: int, retry_after: float | None, random: float) -> timedelta:
        """Exponential backoff with jitter; a provider's Retry-After is honoured
        but clamped, so a hostile value can neither stall nor storm."""
        if retry_after is not None:
            seconds = min(max(retry_after, self.min_backoff_seconds), self.max_backoff_seconds)
        else:
            ceiling = min(
                self.max_backoff_seconds, self.min_backoff_seconds * 2 ** min(failures, 20)
            )
            seconds = ceiling / 2 + (ceiling / 2) * random
        return timedelta(seconds=seconds)
