"""OAuth 2.0 Token Revocation (RFC 7009 §2.1): tell the provider a token is dead.

The refresh token is revoked first (§2.1: a provider should then revoke the
access tokens granted with it), then the access token for providers that
only track those.
"""

from __future__ import annotations

from datetime import datetime

from ..domain.connections import TokenSet
from .rfc6749 import ClientCredentials, TokenEndpoint

__all__ = ["revoke_tokens"]


async def revoke_tokens(
    endpoint: TokenEndpoint, url: str, client: ClientCredentials, tokens: TokenSet, now: datetime
) -> None:
    """Raises TokenEndpointError when the provider does not confirm."""
    if tokens.refresh_token:
        await endpoint.post_form(
            url, client, {"token": tokens.refresh_token, "token_type_hint": "refresh_token"}, now
        )
    await endpoint.post_form(
        url, client, {"token": tokens.access_token, "token_type_hint": "access_token"}, now
    )
