"""RFC 7662 token introspection of Nexus session tokens.

A service that receives a session token can verify its signature offline with
the JWK Set, but only introspection knows whether the session was closed
early. Per RFC 7662 §2.2 an inactive answer carries nothing but
``"active": false`` (closed, expired, or not a Nexus token); an active one
carries the token's claims (``scope``, ``client_id``, ``sub``, ``exp``,
``acting_for``, ``tenant_id``...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._models import MalformedAnswer

__all__ = ["INTROSPECT_PATH", "Introspection", "introspection"]

# RFC 7662 §2.1 names no path; this is the gateway's.
INTROSPECT_PATH = "/v1/agent-sessions:introspect"


@dataclass(frozen=True)
class Introspection:
    """The answer about one session token: ``active`` and, when active, its claims."""

    active: bool
    claims: dict[str, Any]

    @property
    def scopes(self) -> tuple[str, ...]:
        """``scope`` split on spaces (RFC 7662 §2.2); empty when inactive."""
        scope = self.claims.get("scope", "")
        return tuple(scope.split()) if isinstance(scope, str) else ()


def introspection(body: Any) -> Introspection:
    if not isinstance(body, dict) or not isinstance(body.get("active", False), bool):
        raise MalformedAnswer("active")
    claims = {name: value for name, value in body.items() if name != "active"}
    return Introspection(active=bool(body.get("active", False)), claims=claims)
