"""The gateway's proof of who a forwarded call is for.

The gateway authenticates admins and agents; the broker and the policy service
act on its word for who is calling. That word travels as ``x-nexus-caller``
and is believed only with ``x-nexus-caller-proof``: an HMAC-SHA256 (RFC 2104)
over the caller, the exact method the proof is for and an expiry a minute out.

Why an assertion and not the caller's own credential: the callee would need
every admin key, and a policy round trip per agent key on the GetToken path,
which the gateway's agent key cache exists to avoid. Why a MAC and not a
signature: the key is derived from the internal token, which only the services
hold, and rotates with it (``NEXUS_INTERNAL_TOKEN_PREVIOUS``). What makes it a
proof rather than a claim:

* a caller header without a valid proof is refused (``CALLER_PROOF_INVALID``);
* a proof is good for one method and one minute, so a header seen in one call
  does not carry over to another, nor to later;
* with mutual TLS on, only a peer whose certificate says ``gateway`` may
  present one at all (``CALLER_ASSERTING``), so the internal token alone, or
  another service's certificate, names no caller.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable

from ._auth import Caller
from ._errors import CallerProofInvalid

__all__ = ["CallerProofs"]

# Long enough for pods whose clocks differ by seconds; short enough that a
# proof outlives its call by little.
_LIFETIME_SECONDS = 60
_MAX_AHEAD_SECONDS = 2 * _LIFETIME_SECONDS
_LABEL = b"nexus caller proof v1"


def _key(token: str) -> bytes:
    # A key of its own, so that a proof never doubles as the token or its digest.
    return hmac.new(token.encode(), _LABEL, hashlib.sha256).digest()


def _mac(key: bytes, caller: str, method: str, expires: int) -> bytes:
    # JSON: no choice of caller text can shift where one field ends.
    message = json.dumps([caller, method, expires], separators=(",", ":")).encode()
    return hmac.new(key, message, hashlib.sha256).digest()


class CallerProofs:
    """Makes proofs with the current internal token's key; accepts the current
    and previous tokens' keys."""

    def __init__(
        self,
        current: str,
        accepted: Iterable[str] = (),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signing = _key(current)
        self._keys = [self._signing, *(_key(token) for token in accepted if token != current)]
        self._clock = clock

    def __repr__(self) -> str:
        return f"CallerProofs(keys={len(self._keys)})"

    def prove(self, caller: Caller, method: str) -> str:
        """The proof that the gateway established ``caller`` for a call of ``method``."""
        expires = int(self._clock()) + _LIFETIME_SECONDS
        mac = _mac(self._signing, str(caller), method, expires)
        return f"{expires}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"

    def verify(self, claimed: str, method: str, proof: str | None) -> Caller:
        """The caller ``claimed`` names, if ``proof`` was made for it and this method."""
        if not proof:
            raise CallerProofInvalid("a call that names a caller must carry the gateway's proof")
        expires_text, _, mac_text = proof.partition(".")
        now = self._clock()
        try:
            expires = int(expires_text)
            mac = base64.urlsafe_b64decode(mac_text + "=" * (-len(mac_text) % 4))
        except ValueError as exc:
            raise CallerProofInvalid("the caller proof is malformed") from exc
        if not now < expires <= now + _MAX_AHEAD_SECONDS:
            raise CallerProofInvalid("the caller proof has expired")
        matched = False
        for key in self._keys:
            # Every key is tried, so the time taken does not tell which one matched.
            matched |= hmac.compare_digest(mac, _mac(key, claimed, method, expires))
        if not matched:
            raise CallerProofInvalid("the caller proof is not valid for this caller and method")
        return Caller.parse(claimed)
