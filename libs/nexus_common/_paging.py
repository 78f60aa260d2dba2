"""Opaque, signed page tokens for keyset pagination (AIP-158).

A token records where the last page ended and a fingerprint of the query it
belongs to, so a token reused with other filters is refused rather than
silently returning the wrong rows. It is signed (HMAC-SHA256, truncated to 128
bits) under a key only the service holds: a position a caller made up never
reaches a query, and any token not issued here is refused as
``INVALID_PAGE_TOKEN``.

Format: ``<base64url JSON {"p": position, "q": fingerprint}>.<base64url tag>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

from ._errors import InvalidArgument, InvalidPageToken

__all__ = ["PageTokens", "page_size"]

_DEFAULT_PAGE_SIZE = 50
_MAX_PAGE_SIZE = 100
_TAG_BYTES = 16
# Keys derived for one purpose are useless for any other.
_KEY_LABEL = b"nexus page tokens v1"


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", field="page_size")
    return min(requested or _DEFAULT_PAGE_SIZE, _MAX_PAGE_SIZE)


def _fingerprint(query: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:16]


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PageTokens:
    """Issues and reads the page tokens of one service, signed under a key
    derived from ``secret`` for this purpose and ``service`` alone: services
    sharing a secret cannot read each other's tokens."""

    def __init__(self, secret: bytes, service: str) -> None:
        label = _KEY_LABEL + b" " + service.encode()
        self._key = hmac.new(secret, label, hashlib.sha256).digest()

    def _tag(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_TAG_BYTES]

    def encode(self, position: list[Any], query: dict[str, Any]) -> str:
        payload = json.dumps({"p": position, "q": _fingerprint(query)}, separators=(",", ":"))
        data = payload.encode()
        return f"{_b64encode(data)}.{_b64encode(self._tag(data))}"

    def decode(self, token: str, query: dict[str, Any]) -> list[Any] | None:
        """The position a token resumes from; None for the first page."""
        if not token:
            return None
        data = self._verified(token)
        payload = json.loads(data)
        if payload["q"] != _fingerprint(query):
            raise InvalidPageToken(
                "page_token belongs to a query with other filters", field="page_token"
            )
        position: list[Any] = payload["p"]
        return position

    def _verified(self, token: str) -> bytes:
        """The payload of a token this service issued; anything else is refused
        before it is parsed."""
        body, _, tag = token.partition(".")
        try:
            data, expected = _b64decode(body), _b64decode(tag)
        except (binascii.Error, ValueError) as exc:
            raise _not_issued_here() from exc
        if not hmac.compare_digest(self._tag(data), expected):
            raise _not_issued_here()
        return data


def _not_issued_here() -> InvalidPageToken:
    return InvalidPageToken(
        "page_token is not one this service issued: pass next_page_token back unchanged",
        field="page_token",
    )
