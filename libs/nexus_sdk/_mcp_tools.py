"""Tools that declare the credentials they need, and get them for the length of one call.

    nexus = NexusMCP(options, agent_id="crm-mcp", resource=resource)

    @mcp.tool()
    @nexus.on_behalf_of_user(provider="internal-ops", scopes=["acme:gliding"])
    async def glide(customer_ids: list[str], credentials: ToolCredentials) -> dict: ...

The decorator hides the ``ToolCredentials`` parameter from the tool's input
schema, opens a Nexus session before the body runs and closes it when the body
returns, raises or is cancelled. A Nexus refusal becomes an MCP tool error
(``isError``) naming the ``ErrorInfo`` reason; no token reaches a result, an
error or a log line.
"""

from __future__ import annotations

import functools
import inspect
import logging
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar

import anyio
import httpx
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from ._client import AsyncNexusClient
from ._errors import NexusError
from ._mcp_auth import ProtectedResource
from ._mcp_credentials import ToolCredentials, session_credentials
from ._models import AgentSession
from ._options import NexusClientOptions

__all__ = ["CONNECTION_META_KEY", "DEFAULT_SESSION_TTL", "NexusMCP"]

logger = logging.getLogger("nexus_sdk.mcp")

R = TypeVar("R")

# A tool call names the connection to use in its request `_meta` (set by the
# host application, as the agents guide has the orchestrator pass connection
# ids), not in its arguments, which the model writes.
CONNECTION_META_KEY = "dev.nexus/connection_id"
# Sessions are closed when the call ends; the TTL only bounds one whose
# process died mid-call.
DEFAULT_SESSION_TTL = timedelta(minutes=5)
# The name of the Context parameter added to a tool that does not take one.
_CONTEXT_PARAMETER = "nexus_mcp_context"


@dataclass(frozen=True)
class _Need:
    provider: str
    scopes: tuple[str, ...]
    acts_for: Literal["user", "agent"]
    ttl: timedelta | int
    connection_from_meta: bool


class NexusMCP:
    """Nexus for one MCP server: its agent identity, and the resource server it is.

    ``options`` carries the gateway URL and the agent's key (``NEXUS_AGENT_KEY``
    when not given); ``agent_id`` is the agent that key belongs to. Give the
    server ``token_verifier`` and ``auth_settings`` so that every MCP request
    needs a user's token. Close with ``aclose()`` (the HTTP client is ours
    unless ``http`` is given).
    """

    def __init__(
        self,
        options: NexusClientOptions,
        *,
        agent_id: str,
        resource: ProtectedResource,
        token_verifier: TokenVerifier,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if options.api_key is not None:
            # An MCP server acts as an agent; an admin key would act with admin rights.
            raise ValueError("an MCP server needs an agent key (agent_key), not an admin api_key")
        self.agent_id = agent_id
        self.resource = resource
        self.token_verifier = token_verifier
        self.client = AsyncNexusClient(options, http=http)

    @property
    def auth_settings(self) -> AuthSettings:
        """For ``MCPServer(auth=...)``: the metadata and the 401 challenge."""
        return self.resource.auth_settings(self.token_verifier)

    def on_behalf_of_user(
        self,
        *,
        provider: str,
        scopes: Sequence[str],
        ttl: timedelta | int = DEFAULT_SESSION_TTL,
        connection_from_meta: bool = False,
    ) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Awaitable[R]]]:
        """A tool that acts for the calling user: the MCP request's bearer token
        becomes the ``user_context_token`` of an on-behalf-of session, which
        Nexus grants only if both the user and this agent hold ``scopes``, on a
        connection in the user's own workspaces. ``connection_from_meta`` as
        for ``as_agent``."""
        need = _Need(provider, _scope_tuple(scopes), "user", ttl, connection_from_meta)
        return self._declare(need)

    def as_agent(
        self,
        *,
        provider: str,
        scopes: Sequence[str],
        ttl: timedelta | int = DEFAULT_SESSION_TTL,
        connection_from_meta: bool = False,
    ) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Awaitable[R]]]:
        """A tool that acts as this server's agent: an agent session limited to
        ``scopes``, on the provider's only active connection the agent may reach.

        With ``connection_from_meta``, a call may name a connection in its
        request ``_meta`` (``CONNECTION_META_KEY``). The calling user's client
        writes ``_meta``, so the session then carries the request's verified
        bearer token as its ``owner_context_token``: Nexus grants it only if
        the named connection is that user's (as the app's ``BACKEND_AUTH_URL``
        says), whatever else the agent may reach. A call naming a connection is
        refused without a verified user token, and always unless declared."""
        need = _Need(provider, _scope_tuple(scopes), "agent", ttl, connection_from_meta)
        return self._declare(need)

    async def aclose(self) -> None:
        await self.client.aclose()

    def __repr__(self) -> str:
        return f"NexusMCP(agent_id={self.agent_id!r}, resource={self.resource.url!r})"

    def _declare(
        self, need: _Need
    ) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Awaitable[R]]]:
        def decorate(tool: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
            return self._wrap(tool, need)

        return decorate

    def _wrap(self, tool: Callable[..., Awaitable[R]], need: _Need) -> Callable[..., Awaitable[R]]:
        if not inspect.iscoroutinefunction(tool):
            raise TypeError(f"{tool.__name__} must be an async function to receive credentials")
        signature = inspect.signature(tool, eval_str=True)
        hints = typing.get_type_hints(tool)
        credentials_parameter = _parameter_of_type(tool, hints, ToolCredentials)
        if credentials_parameter is None:
            raise TypeError(f"{tool.__name__} must take a parameter annotated ToolCredentials")
        context_parameter = _parameter_of_type(tool, hints, Context)
        parameters = [p for p in signature.parameters.values() if p.name != credentials_parameter]
        if context_parameter is None:
            context_parameter = _CONTEXT_PARAMETER
            parameters.append(
                inspect.Parameter(
                    _CONTEXT_PARAMETER, inspect.Parameter.KEYWORD_ONLY, annotation=Context
                )
            )
        added_context = context_parameter == _CONTEXT_PARAMETER

        async def call(**kwargs: Any) -> R:
            context: Context = kwargs[context_parameter]
            if added_context:
                del kwargs[context_parameter]
            async with self._credentials(need, context, tool.__name__) as credentials:
                kwargs[credentials_parameter] = credentials
                return await tool(**kwargs)

        # The MCP SDK builds the input schema from this signature: the credentials
        # parameter is ours to fill, so it is not there; the Context is.
        functools.update_wrapper(call, tool, assigned=("__module__", "__name__", "__qualname__"))
        call.__doc__ = tool.__doc__
        call.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        call.__annotations__ = {p.name: p.annotation for p in parameters} | {
            "return": signature.return_annotation
        }
        del call.__wrapped__  # type: ignore[attr-defined]
        return call

    @asynccontextmanager
    async def _credentials(
        self, need: _Need, context: Context, tool: str
    ) -> AsyncIterator[ToolCredentials]:
        session = await self._open(need, context, tool)
        try:
            yield session_credentials(session)
        finally:
            # Shielded: a cancelled call still ends its session.
            with anyio.CancelScope(shield=True):
                await self._close(session, tool)

    async def _open(self, need: _Need, context: Context, tool: str) -> AgentSession:
        connection_id = _named_connection(context, need, tool)
        try:
            if need.acts_for == "user":
                return await self.client.request_obo_session(
                    agent_id=self.agent_id,
                    provider=need.provider,
                    scopes=need.scopes,
                    user_context_token=_user_token(tool),
                    ttl=need.ttl,
                    connection_id=connection_id,
                )
            return await self.client.request_agent_session(
                agent_id=self.agent_id,
                provider=need.provider,
                scopes=need.scopes,
                ttl=need.ttl,
                connection_id=connection_id,
                # A connection the caller chose must be the caller's own.
                owner_context_token=_user_token(tool) if connection_id else None,
            )
        except NexusError as exc:
            logger.info("tool %s: Nexus refused its credentials (%s)", tool, exc.reason)
            raise ToolError(_refusal(need, exc)) from exc

    async def _close(self, session: AgentSession, tool: str) -> None:
        try:
            await self.client.close_agent_session(session.session_id)
        except NexusError as exc:
            # The session still lapses at its expiry; the tool's own outcome stands.
            logger.warning(
                "tool %s: could not close session %s (%s); it lapses at its expiry",
                tool,
                session.session_id,
                exc.reason or type(exc).__name__,
            )


def _scope_tuple(scopes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(scopes, str) or not scopes:
        raise TypeError("scopes must be a non-empty list of scope strings")
    return tuple(scopes)


def _parameter_of_type(
    tool: Callable[..., Any], hints: Mapping[str, Any], kind: type
) -> str | None:
    names = [
        name
        for name, hint in hints.items()
        if name != "return" and inspect.isclass(hint) and issubclass(hint, kind)
    ]
    if len(names) > 1:
        raise TypeError(f"{tool.__name__} takes more than one {kind.__name__} parameter")
    return names[0] if names else None


def _named_connection(context: Context, need: _Need, tool: str) -> str | None:
    meta = context.request_context.meta or {}
    named = meta.get(CONNECTION_META_KEY)
    if named is None:
        return None
    if not need.connection_from_meta:
        raise ToolError(
            f"{tool} does not let a call choose its connection (_meta {CONNECTION_META_KEY}); "
            f"it uses the {need.provider} connection Nexus picks"
        )
    if not isinstance(named, str) or not named:
        raise ToolError(f"_meta {CONNECTION_META_KEY} must be a connection id string")
    return named


def _user_token(tool: str) -> str:
    verified = get_access_token()
    if verified is None:
        raise ToolError(
            f"{tool} needs the calling user's verified token (to act for them, or to check that "
            "the connection it names is theirs), but the request carried none (give the "
            "MCPServer NexusMCP's token_verifier and auth_settings)"
        )
    return verified.token


def _refusal(need: _Need, error: NexusError) -> str:
    who = "the calling user" if need.acts_for == "user" else "this server's agent"
    reason = f" ({error.reason})" if error.reason else ""
    return (
        f"Nexus gave no {need.provider} credentials with {' '.join(need.scopes)} "
        f"for {who}: {error.message}{reason}"
    )
