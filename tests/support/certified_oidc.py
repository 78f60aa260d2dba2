"""Run the certified OpenID Connect provider (tests/support/certified_oidc/server.mjs).

Built on the OpenID Certified ``oidc-provider`` npm package. Unlike the mock in
``oidc_server.py`` it keeps real grants: revoking any token of a grant (an
access token as well as a refresh token) revokes the whole grant, so its refresh
token then fails with ``invalid_grant`` (RFC 7009 section 2.1 allows this).

    with start_certified_oidc(["http://127.0.0.1:9/cb"]) as oidc:
        discovery = httpx.get(oidc.discovery_url).json()   # issuer == oidc.issuer
        introspect(oidc, access_token)["active"]
        certified_stats(oidc)["token_calls"]               # {"refresh_token": 2, ...}

Its one client is ``CLIENT_ID`` / ``CLIENT_SECRET`` (client_secret_basic) with
the given redirect URIs. Login and consent need no human: following the
redirects from the authorization URL, keeping cookies, ends at the redirect URI
with ``code``, ``state`` and ``iss``. Every code exchange returns a refresh
token, which is never rotated.
"""

from __future__ import annotations

from typing import Any

from tests.support.node_server import REPO_ROOT, NodeServer, start_node_server

__all__ = [
    "ACCOUNT_ID",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "SCOPES",
    "CertifiedOidc",
    "certified_stats",
    "introspect",
    "start_certified_oidc",
]

CERTIFIED_OIDC_DIR = REPO_ROOT / "tests" / "support" / "certified_oidc"
CLIENT_ID = "nexus-client"
CLIENT_SECRET = "s3cret"  # a throwaway test client's secret
ACCOUNT_ID = "user-1"
SCOPES = ("openid", "offline_access", "crm:contacts:read", "crm:contacts:write")


class CertifiedOidc(NodeServer):
    """A running provider; stop it with ``stop()`` or by leaving a ``with`` block."""

    client_id = CLIENT_ID
    client_secret = CLIENT_SECRET
    issuer: str
    port: int

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    @property
    def revocation_url(self) -> str:
        return f"{self.issuer}/token/revocation"

    @property
    def introspection_url(self) -> str:
        return f"{self.issuer}/token/introspection"


def start_certified_oidc(redirect_uris: list[str], port: int = 0) -> CertifiedOidc:
    """Start a provider on 127.0.0.1 (a free port unless given) with a fresh RS256 key,
    whose client registers ``redirect_uris``."""
    args = [str(port)]
    for uri in redirect_uris:
        args += ["--redirect-uri", uri]
    process, ready = start_node_server(
        CERTIFIED_OIDC_DIR, "oidc-provider", args, "certified test OIDC server"
    )
    server = CertifiedOidc(process)
    server.issuer, server.port = ready["issuer"], ready["port"]
    return server


def certified_stats(server: CertifiedOidc) -> dict[str, Any]:
    """What the provider has seen: ``token_calls`` per grant type, ``token_errors``
    per error code, ``revocation_calls``, ``introspection_calls`` and
    ``interactions`` finished per prompt (``login``, ``consent``)."""
    import httpx

    reply = httpx.get(f"{server.issuer}/__control/stats", timeout=5)
    reply.raise_for_status()
    result: dict[str, Any] = reply.json()
    return result


def introspect(server: CertifiedOidc, token: str) -> dict[str, Any]:
    """The provider's RFC 7662 introspection of ``token``, e.g. ``{"active": False}``
    or ``{"active": True, "scope": "...", "token_type": "Bearer", ...}``."""
    import httpx

    reply = httpx.post(
        server.introspection_url,
        data={"token": token},
        auth=(server.client_id, server.client_secret),
        timeout=5,
    )
    reply.raise_for_status()
    result: dict[str, Any] = reply.json()
    return result
