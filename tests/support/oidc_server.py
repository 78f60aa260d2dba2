"""Run the test OpenID Connect provider (tests/support/oidc/server.mjs).

    with start_oidc_server() as oidc:
        discovery = httpx.get(oidc.discovery_url).json()   # issuer == oidc.issuer

With ``bad_issuer=True`` the discovery document names ``BAD_ISSUER`` as its
issuer while every endpoint it lists still works, for tests of discovery
validation.
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

REPO_ROOT = Path(__file__).resolve().parents[2]
OIDC_DIR = REPO_ROOT / "tests" / "support" / "oidc"
BAD_ISSUER = "https://wrong-issuer.invalid"
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


class OidcServer:
    """A running provider; stop it with ``stop()`` or by leaving a ``with`` block."""

    def __init__(
        self, process: subprocess.Popen[bytes], issuer: str, port: int, advertised_issuer: str
    ) -> None:
        self._process = process
        self.issuer = issuer
        self.port = port
        # What the discovery document claims; differs from issuer only with bad_issuer.
        self.advertised_issuer = advertised_issuer

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

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

    def __enter__(self) -> OidcServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_oidc_server(*, bad_issuer: bool = False, port: int = 0) -> OidcServer:
    """Start a provider on 127.0.0.1 (a free port unless given) with a fresh RS256 key."""
    if not (OIDC_DIR / "node_modules" / "oauth2-mock-server").is_dir():
        raise RuntimeError(
            "the test OIDC server is not installed: run "
            f"`npm ci --prefix {OIDC_DIR.relative_to(REPO_ROOT)}` in {REPO_ROOT}"
        )
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("`node` is not on PATH; the test OIDC server needs Node.js 20 or newer")

    cmd = [node, str(OIDC_DIR / "server.mjs"), str(port), "--exit-on-stdin-eof"]
    if bad_issuer:
        cmd += ["--issuer-override", BAD_ISSUER]
    # stdin stays open for the server's lifetime: if this process dies without
    # stop(), the pipe closes and the server exits instead of lingering.
    # stderr goes to a file so a failed start can be explained without a
    # reader thread to keep a pipe drained.
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            cmd, cwd=OIDC_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        )
        try:
            ready = json.loads(_read_ready_line(process))
        except BaseException as failure:
            process.kill()
            process.wait()
            stderr.seek(0)
            detail = stderr.read().decode(errors="replace").strip()
            raise RuntimeError(f"test OIDC server did not start: {failure}\n{detail}") from failure
    issuer = ready["issuer"]
    return OidcServer(process, issuer, ready["port"], BAD_ISSUER if bad_issuer else issuer)


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
