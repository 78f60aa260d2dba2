"""The OAuth ``state`` parameter: HMAC-signed, expiring, bound to one
authorization attempt (RFC 6749 §10.12). Single use is enforced by storage.

Format: ``<attempt id>.<expiry unix seconds>.<base64url HMAC-SHA256>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nexus_common import StateInvalid

__all__ = ["SignedState", "StateSigner"]

_FORMAT = re.compile(r"([A-Za-z0-9_-]{16,64})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class SignedState:
    attempt_id: str
    expires_at: datetime
    token: str = field(repr=False)


class StateSigner:
    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the state key must be at least 32 bytes")
        self._key = key

    def _mac(self, attempt_id: str, expiry: int) -> str:
        digest = hmac.new(self._key, f"{attempt_id}.{expiry}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, expires_at: datetime) -> SignedState:
        attempt_id = secrets.token_urlsafe(24)
        expiry = int(expires_at.timestamp())
        return SignedState(
            attempt_id, expires_at, f"{attempt_id}.{expiry}.{self._mac(attempt_id, expiry)}"
        )

    def verify(self, token: str, now: datetime) -> str:
        """The attempt id of a genuine, unexpired state; else StateInvalid."""
        match = _FORMAT.fullmatch(token or "")
        if match is None:
            raise StateInvalid("the state parameter is missing or malformed")
        attempt_id, expiry_text, mac = match.groups()
        if not hmac.compare_digest(mac, self._mac(attempt_id, int(expiry_text))):
            raise StateInvalid("the state parameter is not genuine")
        if datetime.fromtimestamp(int(expiry_text), UTC) <= now:
            raise StateInvalid("the state parameter has expired; start the connection again")
        return attempt_id
