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

import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

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

REPO_ROOT = Path(__file__).resolve().parents[2]
CERTIFIED_OIDC_DIR = REPO_ROOT / "tests" / "support" / "certified_oidc"
CLIENT_ID = "nexus-client"
CLIENT_SECRET = "s3cret"  # a throwaway test client's secret
ACCOUNT_ID = "user-1"
SCOPES = ("openid", "offline_access", "crm:contacts:read", "crm:contacts:write")
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


class CertifiedOidc:
    """A running provider; stop it with ``stop()`` or by leaving a ``with`` block."""

    client_id = CLIENT_ID
    client_secret = CLIENT_SECRET

    def __init__(self, process: subprocess.Popen[bytes], issuer: str, port: int) -> None:
        self._process = process
        self.issuer = issuer
        self.port = port

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

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> CertifiedOidc:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_certified_oidc(redirect_uris: list[str], port: int = 0) -> CertifiedOidc:
    """Start a provider on 127.0.0.1 (a free port unless given) with a fresh RS256 key,
    whose client registers ``redirect_uris``."""
    if not (CERTIFIED_OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        raise RuntimeError(
            "the certified test OIDC server is not installed: run "
            f"`npm ci --prefix {CERTIFIED_OIDC_DIR.relative_to(REPO_ROOT)}` in {REPO_ROOT}"
        )
    node = shutil.which("node")
    if node is None:
        raise RuntimeError(
            "`node` is not on PATH; the certified test OIDC server needs Node.js 20 or newer"
        )

    cmd = [node, str(CERTIFIED_OIDC_DIR / "server.mjs"), str(port), "--exit-on-stdin-eof"]
    for uri in redirect_uris:
        cmd += ["--redirect-uri", uri]
    # stdin stays open for the server's lifetime: if this process dies without
    # stop(), the pipe closes and the server exits instead of lingering.
    # stderr goes to a file so a failed start can be explained without a
    # reader thread to keep a pipe drained.
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            cmd,
            cwd=CERTIFIED_OIDC_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        try:
            ready = json.loads(_read_ready_line(process))
        except BaseException as failure:
            process.kill()
            process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()
            stderr.seek(0)
            detail = stderr.read().decode(errors="replace").strip()
            raise RuntimeError(
                f"certified test OIDC server did not start: {failure}\n{detail}"
            ) from failure
    return CertifiedOidc(process, ready["issuer"], ready["port"])


def _read_ready_line(process: subprocess.Popen[bytes]) -> str:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    received = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in received:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no ready line within {STARTUP_TIMEOUT_S:.0f}s")
            if selector.select(remaining):
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(f"server exited with code {process.wait()}")
                received += chunk
    return received.partition(b"\n")[0].decode()


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
