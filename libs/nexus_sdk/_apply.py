"""Applying a connection's credentials to an outgoing request, as its strategy says."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from ._models import TokenPayload

__all__ = ["AppliedCredentials", "UnsupportedStrategy", "apply_credentials"]


class UnsupportedStrategy(ValueError):
    """The token's strategy is one this SDK does not know how to apply."""


@dataclass(frozen=True)
class AppliedCredentials:
    """What to add to a request: headers, query parameters and body fields."""

    headers: dict[str, str] = field(default_factory=dict, repr=False)
    query: dict[str, str] = field(default_factory=dict, repr=False)
    body: dict[str, str] = field(default_factory=dict, repr=False)


def apply_credentials(token: TokenPayload) -> AppliedCredentials:
    """Where each credential goes: ``oauth2`` is a Bearer ``Authorization``
    header, ``basic_auth`` a Basic one, and ``api_key`` fields go where the
    provider's schema puts them (a header, a query parameter or a body field)."""
    kind = token.strategy.get("type")
    credentials = token.credentials
    if kind == "oauth2":
        return AppliedCredentials(
            headers={"Authorization": f"Bearer {credentials['access_token']}"}
        )
    if kind == "basic_auth":
        pair = f"{credentials['username']}:{credentials['password']}".encode()
        return AppliedCredentials(
            headers={"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
        )
    if kind == "api_key":
        applied = AppliedCredentials()
        places = {"header": applied.headers, "query": applied.query, "body": applied.body}
        for spec in token.strategy.get("fields", []):
            place = places.get(spec.get("in"))
            if place is None:
                raise UnsupportedStrategy(
                    f"an api_key field goes {spec.get('in')!r}, not known here"
                )
            place[spec["key"]] = str(credentials[spec["name"]])
        return applied
    raise UnsupportedStrategy(f"the credential strategy {kind!r} is not known to this SDK")
