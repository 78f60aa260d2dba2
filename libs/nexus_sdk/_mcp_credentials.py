"""What an MCP tool receives from Nexus for one call: ready credentials, no token handling.

Values and an ``httpx.Auth`` only; no I/O. ``repr()`` shows the provider,
scopes and session id, never a token, so a tool may log its credentials
object without leaking it.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

import httpx

from ._apply import AppliedCredentials, apply_credentials
from ._models import AgentSession, TokenPayload

__all__ = ["ToolCredentials", "session_credentials"]


class _AppliedAuth(httpx.Auth):
    """Puts the credentials in each request's headers and query, as their strategy says."""

    def __init__(self, applied: AppliedCredentials) -> None:
        self._applied = applied

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(self._applied.headers)
        if self._applied.query:
            request.url = request.url.copy_merge_params(self._applied.query)
        yield request

    def __repr__(self) -> str:
        return "<nexus credentials>"


@dataclass(frozen=True)
class ToolCredentials:
    """Credentials for one tool call, good until the call ends (its session is then closed).

    ``auth`` is an ``httpx.Auth`` for ``httpx.AsyncClient(auth=...)`` or one
    request; ``applied.headers`` holds the same for other HTTP clients.
    ``session`` is the Nexus session behind them: on behalf of a user it
    carries ``acting_for``, ``tenant_id`` and ``clearance_level`` for the
    downstream service to enforce. ``scopes`` is what the credential really
    carries: the scopes the tool declared, unless the provider cannot narrow
    its tokens and Nexus is allowed to hand out broader ones
    (``session.token_scopes``).
    """

    provider: str
    scopes: tuple[str, ...]
    session: AgentSession
    applied: AppliedCredentials = field(repr=False)

    @property
    def auth(self) -> httpx.Auth:
        """The credentials as an ``httpx.Auth`` (a Bearer ``Authorization`` header)."""
        return _AppliedAuth(self.applied)

    @property
    def acting_for(self) -> str:
        """The user the call acts for; empty when the agent acts as itself."""
        return self.session.acting_for

    @property
    def tenant_id(self) -> str:
        """The user's tenant, stamped by Nexus from the user's context; else empty."""
        return self.session.tenant_id

    @property
    def clearance_level(self) -> str:
        """The user's clearance level, stamped by Nexus; else empty."""
        return self.session.clearance_level


def session_credentials(session: AgentSession) -> ToolCredentials:
    """A session's ``access_token`` as a Bearer credential: the provider's
    token, or for ``nexus`` providers the session token itself."""
    bearer = TokenPayload(
        strategy={"type": "oauth2"},
        credentials={"access_token": session.access_token},
        expires_at=session.expires_at,
    )
    return ToolCredentials(
        provider=session.provider,
        scopes=session.token_scopes or session.scopes,
        session=session,
        applied=apply_credentials(bearer),
    )
