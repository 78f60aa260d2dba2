"""The one error tree of the SDK, and the two places errors are made.

    NexusError                      .status (HTTP or None), .reason, .message, .metadata
    ├── NexusInvalidRequestError    400, 413: the request was refused as it stands
    ├── NexusAuthError              401 (who is calling?) and 403 (not allowed)
    ├── NexusNotFoundError          404
    ├── NexusConflictError          409
    ├── NexusUnavailableError       429, 502, 503, 504, and no answer at all (network, timeout)
    └── NexusUnexpectedError        anything else: 500, a redirect, a body not as documented

``reason`` is the stable ``google.rpc.ErrorInfo`` reason the gateway sent
(``AGENT_SCOPE_NOT_ALLOWED``, ``USER_PERMISSION_MISSING``...), or ``None`` when
the answer carried none (a proxy's HTML page, a network failure). Branch on
``reason``; ``message`` is for people.

Messages come from the gateway's ``message`` field, which never holds a
secret, or are written here. Request bodies, keys and tokens are never put in
an error, and neither is an unrecognised response body: it may be anything.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

__all__ = [
    "ERROR_INFO_TYPE",
    "NexusAuthError",
    "NexusConflictError",
    "NexusError",
    "NexusInvalidRequestError",
    "NexusNotFoundError",
    "NexusUnavailableError",
    "NexusUnexpectedError",
    "error_from_response",
    "map_transport_errors",
]

# Any type URL prefix is accepted; Envoy and the gateway send type.googleapis.com/.
ERROR_INFO_TYPE = "/google.rpc.ErrorInfo"


class NexusError(Exception):
    """Base of every error the SDK raises for a failed call."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason
        self.metadata: Mapping[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        context = ", ".join(
            part
            for part in (f"HTTP {self.status}" if self.status else "", self.reason or "")
            if part
        )
        return f"{self.message} ({context})" if context else self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, reason={self.reason!r}, "
            f"message={self.message!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments would otherwise be lost when pickled (multiprocessing).
        return (_rebuild, (type(self), self.message, self.status, self.reason, self.metadata))


def _rebuild(
    cls: type[NexusError],
    message: str,
    status: int | None,
    reason: str | None,
    metadata: Mapping[str, str],
) -> NexusError:
    return cls(message, status=status, reason=reason, metadata=metadata)


class NexusInvalidRequestError(NexusError):
    """The gateway refused the request as it stands; sending it again will not help."""


class NexusAuthError(NexusError):
    """No valid caller credential (401), or the caller, agent or user may not do this (403)."""


class NexusNotFoundError(NexusError):
    """The provider, agent, connection or session named does not exist."""


class NexusConflictError(NexusError):
    """The resource exists already or was changed concurrently; read and retry."""


class NexusUnavailableError(NexusError):
    """Nexus or something it depends on could not answer now; retrying later may work."""


class NexusUnexpectedError(NexusError):
    """An answer the API does not document for this call."""


_BY_STATUS: Mapping[int, type[NexusError]] = {
    400: NexusInvalidRequestError,
    413: NexusInvalidRequestError,
    401: NexusAuthError,
    403: NexusAuthError,
    404: NexusNotFoundError,
    409: NexusConflictError,
    # REFRESH_RATE_LIMITED: metadata["retry_after_seconds"] says when.
    429: NexusUnavailableError,
    502: NexusUnavailableError,
    503: NexusUnavailableError,
    504: NexusUnavailableError,
}


def error_from_response(response: httpx.Response) -> NexusError:
    """The error for a non-2xx answer, from its ``google.rpc.Status`` body when it has one.

    A body that is not that JSON (an HTML page from a proxy, say) still gives
    the right class for its status, with a message of our own.
    """
    cls = _BY_STATUS.get(response.status_code, NexusUnexpectedError)
    message, reason, metadata = _status_body(response)
    if not message:
        phrase = response.reason_phrase or "error"
        message = f"the Nexus gateway answered HTTP {response.status_code} {phrase}"
    return cls(message, status=response.status_code, reason=reason, metadata=metadata)


def _status_body(response: httpx.Response) -> tuple[str, str | None, dict[str, str]]:
    try:
        body: Any = response.json()
    except ValueError:
        return "", None, {}
    if not isinstance(body, dict):
        return "", None, {}
    message = body.get("message")
    details = body.get("details")
    reason: str | None = None
    metadata: dict[str, str] = {}
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith(ERROR_INFO_TYPE):
            found = detail.get("reason")
            reason = found if isinstance(found, str) and found else None
            given = detail.get("metadata")
            if isinstance(given, dict):
                metadata = {str(k): str(v) for k, v in given.items()}
            break
    return (message if isinstance(message, str) else ""), reason, metadata


@contextmanager
def map_transport_errors(origin: str) -> Iterator[None]:
    """Turn httpx's failures to get any answer into ``NexusUnavailableError``.

    Only the exception's class name is kept in the message: ``str()`` of a
    transport error is not ours to vouch for. The original stays as ``__cause__``.
    """
    try:
        yield
    except httpx.TimeoutException as exc:
        raise NexusUnavailableError(
            f"the Nexus gateway at {origin} did not answer in time ({type(exc).__name__})"
        ) from exc
    except httpx.TransportError as exc:
        raise NexusUnavailableError(
            f"could not reach the Nexus gateway at {origin} ({type(exc).__name__})"
        ) from exc
