"""Opaque page tokens for keyset pagination (AIP-158).

A token records where the last page ended and a fingerprint of the query it
belongs to, so a token reused with other filters is refused rather than
silently returning the wrong rows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from ._errors import InvalidArgument, InvalidPageToken

__all__ = ["decode_page_token", "encode_page_token", "page_size"]

_DEFAULT_PAGE_SIZE = 50
_MAX_PAGE_SIZE = 100


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", field="page_size")
    return min(requested or _DEFAULT_PAGE_SIZE, _MAX_PAGE_SIZE)


def _fingerprint(query: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:16]


def encode_page_token(position: list[Any], query: dict[str, Any]) -> str:
    payload = json.dumps({"p": position, "q": _fingerprint(query)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_page_token(token: str, query: dict[str, Any]) -> list[Any] | None:
    """The position a token resumes from; None for the first page."""
    if not token:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        position, fingerprint = payload["p"], payload["q"]
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise InvalidPageToken("page_token is not valid", field="page_token") from exc
    if fingerprint != _fingerprint(query) or not isinstance(position, list):
        raise InvalidPageToken(
            "page_token belongs to a query with other filters", field="page_token"
        )
    return position
