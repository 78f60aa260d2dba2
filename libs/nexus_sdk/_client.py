"""The sync and async clients: each only sends the calls ``_calls`` describes.

Every rule (paths, bodies, credentials, errors) lives in ``_calls`` and
``_errors``; the two classes differ only in ``send`` versus ``await send``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _calls
from ._errors import map_transport_errors
from ._models import AgentSession, TokenPayload
from ._options import NexusClientOptions
from ._rfc7662 import Introspection

__all__ = ["AsyncNexusClient", "NexusClient"]

T = TypeVar("T")


def _owned_client_settings(options: NexusClientOptions) -> dict[str, Any]:
    # Redirects are not followed: the gateway never redirects API calls, and
    # following one would send the caller's key somewhere else.
    return {"timeout": httpx.Timeout(options.timeout_seconds), "follow_redirects": False}


class NexusClient:
    """A blocking client for the Nexus gateway's REST API.

        with NexusClient(NexusClientOptions(gateway_url="https://nexus.example.com")) as nexus:
            token = nexus.get_token_by_connection_id(connection_id)

    Give ``http`` to send through your own ``httpx.Client`` (a proxy, mTLS, a
    custom transport); you then own it and close it yourself. Its
    ``follow_redirects`` is not used: a redirect is never followed, since it
    would carry the key elsewhere. Failures raise ``NexusError`` subclasses.
    """

    def __init__(self, options: NexusClientOptions, *, http: httpx.Client | None = None) -> None:
        self.options = options
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(**_owned_client_settings(options))

    def get_token_by_connection_id(self, connection_id: str) -> TokenPayload:
        """Credentials for one connection, fresh (the broker refreshes them)."""
        return self._send(_calls.get_token(self.options, connection_id))

    def refresh_connection(self, connection_id: str) -> TokenPayload:
        """Refresh the connection's token at the provider now, and return it.
        Rarely needed: the broker refreshes before expiry by itself."""
        self._send(_calls.refresh_connection(self.options, connection_id))
        return self._send(_calls.get_token(self.options, connection_id))

    def request_agent_session(
        self,
        *,
        agent_id: str,
        provider: str,
        scopes: Sequence[str],
        ttl: int | timedelta | None = None,
        connection_id: str | None = None,
        workspace_id: str | None = None,
        owner_context_token: str | None = None,
    ) -> AgentSession:
        """A session limited to ``scopes``, which must be within the agent's allowed scopes.

        ``ttl`` defaults to the gateway's; the connection is the one named,
        else the only active one for the provider (and workspace). An agent
        serving several users passes the calling user's token as
        ``owner_context_token``: the connection must then be that user's (as
        the app's ``BACKEND_AUTH_URL`` says), and the session still acts as the agent.
        """
        return self._send(
            _calls.create_agent_session(
                self.options,
                agent_id=agent_id,
                provider=provider,
                scopes=scopes,
                ttl=ttl,
                connection_id=connection_id,
                workspace_id=workspace_id,
                owner_context_token=owner_context_token,
            )
        )

    def request_obo_session(
        self,
        *,
        agent_id: str,
        provider: str,
        scopes: Sequence[str],
        user_context_token: str,
        ttl: int | timedelta | None = None,
        connection_id: str | None = None,
        workspace_id: str | None = None,
    ) -> AgentSession:
        """A session on behalf of the user whose token is given.

        Raises ``NexusAuthError`` (``USER_PERMISSION_MISSING``) when the user
        lacks a scope, and (``AGENT_SCOPE_NOT_ALLOWED``) when the agent does.
        """
        return self._send(
            _calls.create_obo_session(
                self.options,
                agent_id=agent_id,
                provider=provider,
                scopes=scopes,
                user_context_token=user_context_token,
                ttl=ttl,
                connection_id=connection_id,
                workspace_id=workspace_id,
            )
        )

    def close_agent_session(self, session_id: str) -> None:
        """End a session (agent or OBO) early; closing twice is harmless."""
        self._send(_calls.close_agent_session(self.options, session_id))

    def introspect_session(self, token: str) -> Introspection:
        """Whether a session token is still active, and its claims (RFC 7662)."""
        return self._send(_calls.introspect_session(self.options, token))

    def jwks(self) -> dict[str, Any]:
        """The JWK Set that verifies session tokens; needs no credential."""
        return self._send(_calls.get_jwks(self.options))

    def close(self) -> None:
        """Close the HTTP client, unless it was given to us."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> NexusClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NexusClient({self.options!r})"

    def _send(self, call: _calls.Call[T]) -> T:
        with map_transport_errors(self.options.origin):
            # Also for a client given to us that follows redirects: httpx
            # drops only Authorization on another origin, never X-API-Key.
            response = self._http.send(call.request, follow_redirects=False)
        return call.read(response)


class AsyncNexusClient:
    """The same API as ``NexusClient``, for asyncio.

        async with AsyncNexusClient(NexusClientOptions(gateway_url=...)) as nexus:
            session = await nexus.request_agent_session(...)

    Give ``http`` to send through your own ``httpx.AsyncClient``; you then
    own it and close it yourself.
    """

    def __init__(
        self, options: NexusClientOptions, *, http: httpx.AsyncClient | None = None
    ) -> None:
        self.options = options
        self._owns_http = http is None
        self._http = (
            http if http is not None else httpx.AsyncClient(**_owned_client_settings(options))
        )

    async def get_token_by_connection_id(self, connection_id: str) -> TokenPayload:
        """Credentials for one connection, fresh (the broker refreshes them)."""
        return await self._send(_calls.get_token(self.options, connection_id))

    async def refresh_connection(self, connection_id: str) -> TokenPayload:
        """Refresh the connection's token at the provider now, and return it."""
        await self._send(_calls.refresh_connection(self.options, connection_id))
        return await self._send(_calls.get_token(self.options, connection_id))

    async def request_agent_session(
        self,
        *,
        agent_id: str,
        provider: str,
        scopes: Sequence[str],
        ttl: int | timedelta | None = None,
        connection_id: str | None = None,
        workspace_id: str | None = None,
        owner_context_token: str | None = None,
    ) -> AgentSession:
        """A session limited to ``scopes``; see ``NexusClient.request_agent_session``."""
        return await self._send(
            _calls.create_agent_session(
                self.options,
                agent_id=agent_id,
                provider=provider,
                scopes=scopes,
                ttl=ttl,
                connection_id=connection_id,
                workspace_id=workspace_id,
                owner_context_token=owner_context_token,
            )
        )

    async def request_obo_session(
        self,
        *,
        agent_id: str,
        provider: str,
        scopes: Sequence[str],
        user_context_token: str,
        ttl: int | timedelta | None = None,
        connection_id: str | None = None,
        workspace_id: str | None = None,
    ) -> AgentSession:
        """A session on behalf of a user; see ``NexusClient.request_obo_session``."""
        return await self._send(
            _calls.create_obo_session(
                self.options,
                agent_id=agent_id,
                provider=provider,
                scopes=scopes,
                user_context_token=user_context_token,
                ttl=ttl,
                connection_id=connection_id,
                workspace_id=workspace_id,
            )
        )

    async def close_agent_session(self, session_id: str) -> None:
        """End a session (agent or OBO) early; closing twice is harmless."""
        await self._send(_calls.close_agent_session(self.options, session_id))

    async def introspect_session(self, token: str) -> Introspection:
        """Whether a session token is still active, and its claims (RFC 7662)."""
        return await self._send(_calls.introspect_session(self.options, token))

    async def jwks(self) -> dict[str, Any]:
        """The JWK Set that verifies session tokens; needs no credential."""
        return await self._send(_calls.get_jwks(self.options))

    async def aclose(self) -> None:
        """Close the HTTP client, unless it was given to us."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncNexusClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncNexusClient({self.options!r})"

    async def _send(self, call: _calls.Call[T]) -> T:
        with map_transport_errors(self.options.origin):
            # Also for a client given to us; see NexusClient._send.
            response = await self._http.send(call.request, follow_redirects=False)
        return call.read(response)
