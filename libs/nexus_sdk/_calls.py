"""Each API call as data: the ``httpx.Request`` to send and how to read the answer.

Nothing here does I/O, so the sync and async clients share every rule about
paths, bodies, headers and errors, and differ only in how they send (the
sans-I/O split of httpx and authlib).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from ._errors import NexusUnexpectedError, error_from_response
from ._models import AgentSession, MalformedAnswer, TokenPayload, agent_session, token_payload
from ._options import NexusClientOptions
from ._rfc7662 import INTROSPECT_PATH, Introspection, introspection

__all__ = [
    "Call",
    "close_agent_session",
    "create_agent_session",
    "create_obo_session",
    "get_jwks",
    "get_token",
    "introspect_session",
    "refresh_connection",
]

T = TypeVar("T")

USER_AGENT = "nexus-sdk-python"


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and the function that turns its response into a result or an error."""

    request: httpx.Request
    read: Callable[[httpx.Response], T]


def get_token(options: NexusClientOptions, connection_id: str) -> Call[TokenPayload]:
    path = f"/v1/token/{_segment(connection_id, 'connection_id')}"
    return Call(_request(options, "GET", path), _reader(token_payload))


def refresh_connection(options: NexusClientOptions, connection_id: str) -> Call[None]:
    path = f"/v1/refresh/{_segment(connection_id, 'connection_id')}"
    # The answer is the connection's status; callers want the fresh token after it.
    return Call(_request(options, "POST", path), _reader(_nothing))


def create_agent_session(
    options: NexusClientOptions,
    *,
    agent_id: str,
    provider: str,
    scopes: Sequence[str],
    ttl: int | timedelta | None,
    connection_id: str | None,
    workspace_id: str | None,
    owner_context_token: str | None = None,
) -> Call[AgentSession]:
    body = _session_body(agent_id, provider, scopes, ttl, connection_id, workspace_id)
    if owner_context_token is not None:
        body["owner_context_token"] = owner_context_token
    return Call(_request(options, "POST", "/v1/agent-sessions", body), _reader(agent_session))


def create_obo_session(
    options: NexusClientOptions,
    *,
    agent_id: str,
    provider: str,
    scopes: Sequence[str],
    user_context_token: str,
    ttl: int | timedelta | None,
    connection_id: str | None,
    workspace_id: str | None,
) -> Call[AgentSession]:
    body = _session_body(agent_id, provider, scopes, ttl, connection_id, workspace_id)
    body["user_context_token"] = user_context_token
    return Call(_request(options, "POST", "/v1/obo-sessions", body), _reader(agent_session))


def close_agent_session(options: NexusClientOptions, session_id: str) -> Call[None]:
    path = f"/v1/agent-sessions/{_segment(session_id, 'session_id')}"
    return Call(_request(options, "DELETE", path), _reader(_nothing))


def introspect_session(options: NexusClientOptions, token: str) -> Call[Introspection]:
    request = _request(options, "POST", INTROSPECT_PATH, {"token": token})
    return Call(request, _reader(introspection))


def get_jwks(options: NexusClientOptions) -> Call[dict[str, Any]]:
    # Public keys need no credential, so none is sent.
    return Call(_request(options, "GET", "/.well-known/jwks.json", auth=False), _reader(_jwk_set))


def _request(
    options: NexusClientOptions,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    auth: bool = True,
) -> httpx.Request:
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    if auth:
        headers.update(options.auth_headers())
    return httpx.Request(
        method,
        options.base_url + path,
        headers=headers,
        json=body,
        # Carried by the request, so an injected client honours it too.
        extensions={"timeout": httpx.Timeout(options.timeout_seconds).as_dict()},
    )


def _segment(value: str, name: str) -> str:
    """One path segment, percent-encoded so no id can change the path.

    ``/``, ``?`` and ``#`` are encoded; ``.`` and ``..`` are refused, because
    clients and Envoy (``normalize_path``) resolve them even when encoded.
    """
    if not isinstance(value, str) or value in ("", ".", ".."):
        raise ValueError(f"{name} must be a non-empty string other than '.' or '..'")
    return quote(value, safe="")


def _session_body(
    agent_id: str,
    provider: str,
    scopes: Sequence[str],
    ttl: int | timedelta | None,
    connection_id: str | None,
    workspace_id: str | None,
) -> dict[str, Any]:
    if isinstance(scopes, str):
        # A bare string is a sequence of characters: almost certainly a bug.
        raise TypeError("scopes must be a list of scope strings, not one string")
    body: dict[str, Any] = {"agent_id": agent_id, "provider": provider, "scopes": list(scopes)}
    if ttl is not None:
        body["ttl_seconds"] = _seconds(ttl)
    if connection_id is not None:
        body["connection_id"] = connection_id
    if workspace_id is not None:
        body["workspace_id"] = workspace_id
    return body


def _seconds(ttl: int | timedelta) -> int:
    """Whole seconds; the range is the gateway's to enforce (it knows its maximum)."""
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
        if not seconds.is_integer():
            raise ValueError("ttl must be a whole number of seconds")
        return int(seconds)
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise TypeError("ttl must be an int of seconds or a timedelta")
    return ttl


def _reader(parse: Callable[[Any], T]) -> Callable[[httpx.Response], T]:
    def read(response: httpx.Response) -> T:
        if not response.is_success:
            raise error_from_response(response)
        try:
            body = response.json()
        except ValueError:
            # Not chained: a JSONDecodeError keeps the whole body in its .doc.
            raise _unexpected(response) from None
        try:
            return parse(body)
        except MalformedAnswer as exc:
            raise _unexpected(response) from exc

    return read


def _unexpected(response: httpx.Response) -> NexusUnexpectedError:
    return NexusUnexpectedError(
        f"the Nexus gateway answered HTTP {response.status_code} "
        "with a body that is not the documented JSON",
        status=response.status_code,
    )


def _nothing(body: Any) -> None:
    if not isinstance(body, dict):
        raise MalformedAnswer("expected a JSON object")


def _jwk_set(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
        raise MalformedAnswer("keys")
    return body
