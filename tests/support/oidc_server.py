"""Run the test OpenID Connect provider (tests/support/oidc/server.mjs).

    with start_oidc_server() as oidc:
        discovery = httpx.get(oidc.discovery_url).json()   # issuer == oidc.issuer

With ``bad_issuer=True`` the discovery document names ``BAD_ISSUER`` as its
issuer while every endpoint it lists still works, for tests of discovery
validation.
"""

from __future__ import annotations

from tests.support.node_server import REPO_ROOT, NodeServer, start_node_server

OIDC_DIR = REPO_ROOT / "tests" / "support" / "oidc"
BAD_ISSUER = "https://wrong-issuer.invalid"


class OidcServer(NodeServer):
    """A running provider; stop it with ``stop()`` or by leaving a ``with`` block."""

    issuer: str
    port: int
    # What the discovery document claims; differs from issuer only with bad_issuer.
    advertised_issuer: str

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"


def start_oidc_server(*, bad_issuer: bool = False, port: int = 0) -> OidcServer:
    """Start a provider on 127.0.0.1 (a free port unless given) with a fresh RS256 key."""
    args = [str(port)]
    if bad_issuer:
        args += ["--issuer-override", BAD_ISSUER]
    process, ready = start_node_server(OIDC_DIR, "oauth2-mock-server", args, "test OIDC server")
    server = OidcServer(process)
    server.issuer, server.port = ready["issuer"], ready["port"]
    server.advertised_issuer = BAD_ISSUER if bad_issuer else server.issuer
    return server


def behave(server: OidcServer, **behaviour: object) -> None:
    """Change how the token endpoint answers (see server.mjs)."""
    import httpx

    httpx.post(f"{server.issuer}/__control/behaviour", json=behaviour, timeout=5).raise_for_status()


def stats(server: OidcServer) -> dict[str, object]:
    """What the provider has seen: token calls per grant type, client auth, revocations."""
    import httpx

    reply = httpx.get(f"{server.issuer}/__control/stats", timeout=5)
    reply.raise_for_status()
    result: dict[str, object] = reply.json()
    return result
