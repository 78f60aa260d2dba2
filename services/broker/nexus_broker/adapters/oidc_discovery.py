"""Fetching an issuer's OpenID Connect discovery document over HTTP.

Faults that may pass (no connection, timeouts, 429 and 5xx) raise
``IssuerUnreachable`` so the provider can be kept with discovery pending;
answers that show the issuer is wrong raise ``DiscoveryDocumentInvalid``, and
an issuer the outbound policy refuses raises ``OutboundAddressNotAllowed``.
Upstream bodies are never quoted: they could hold anything.
"""

from __future__ import annotations

from typing import Any

import httpx
from nexus_common import (
    AddressRefused,
    DiscoveryDocumentInvalid,
    OutboundAddressNotAllowed,
    OutboundRefused,
    parse_json,
)

from ..domain.discovery import discovery_path

__all__ = ["DiscoveryClient", "IssuerUnreachable"]

_MAX_DOCUMENT_BYTES = 256 * 1024


class IssuerUnreachable(Exception):
    """The issuer could not be asked now; ``reason`` says why, for a person."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DiscoveryClient:
    def __init__(self, http: httpx.AsyncClient, timeout_seconds: float) -> None:
        self._http = http
        self._timeout = httpx.Timeout(timeout_seconds)

    async def fetch(self, issuer: str) -> Any:
        url = discovery_path(issuer)
        try:
            async with self._http.stream(
                "GET",
                url,
                headers={"Accept": "application/json"},
                follow_redirects=False,
                timeout=self._timeout,
            ) as response:
                if response.status_code == 429 or response.status_code >= 500:
                    raise IssuerUnreachable(
                        f"the issuer answered HTTP {response.status_code} at {url}"
                    )
                if response.status_code != 200:
                    raise DiscoveryDocumentInvalid(
                        f"the issuer answered HTTP {response.status_code} at {url}; "
                        "it does not publish OpenID Connect discovery there",
                        field="issuer",
                    )
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > _MAX_DOCUMENT_BYTES:
                        raise DiscoveryDocumentInvalid(
                            "the discovery document is larger than 256 KiB", field="issuer"
                        )
        except AddressRefused as exc:
            raise OutboundAddressNotAllowed(f"issuer is refused: {exc}", field="issuer") from exc
        except OutboundRefused as exc:
            raise DiscoveryDocumentInvalid(
                f"the discovery document at {url} was refused: {exc}", field="issuer"
            ) from exc
        except httpx.TimeoutException as exc:
            raise IssuerUnreachable(f"the issuer did not answer in time at {url}") from exc
        except httpx.TransportError as exc:
            raise IssuerUnreachable(
                f"the issuer could not be reached at {url} ({type(exc).__name__})"
            ) from exc
        try:
            return parse_json(body)
        except ValueError as exc:
            raise DiscoveryDocumentInvalid(
                "the discovery document is not valid JSON", field="issuer"
            ) from exc
