"""A real HTTP server standing in for the customer's user backend (BACKEND_AUTH_URL).

    with start_backend_auth_server() as backend:
        token = backend.issue_token("alice", permissions=["repo:read"])
        # GET backend.url with "Authorization: Bearer <token>" answers the contract JSON

It holds an ES256 signing key, issues user tokens as JWTs, publishes its keys
at ``/jwks.json`` and really verifies the bearer token at ``/auth/me``
(signature, ``exp``, ``iss``, ``aud``): 200 with the contract JSON, else 401.
It listens on 127.0.0.1 with a free port in a background thread, so both the
test process and service subprocesses can reach it. ``set_mode`` makes the auth
endpoint misbehave for fail-closed tests.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.support.loopback import LoopbackServer, owner

__all__ = ["MODES", "SLOW_SECONDS", "BackendAuthServer", "start_backend_auth_server"]

AUDIENCE = "nexus"
AUTH_PATH = "/auth/me"
JWKS_PATH = "/jwks.json"
# Far longer than any sane client timeout, yet stop() interrupts it.
SLOW_SECONDS = 5.0
MODES = (
    "ok",  # verify the token: 200 with the contract JSON, or 401
    "server_error",  # 500
    "slow",  # answer only after SLOW_SECONDS
    "garbage",  # 200 with a body that is not JSON
    "incomplete",  # 200 with JSON that lacks user_id
    "forbidden",  # 403 whatever the token
)


@dataclass(frozen=True)
class _SigningKey:
    kid: str
    private: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> _SigningKey:
        return cls(secrets.token_hex(8), ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        public = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "alg": "ES256", "use": "sig"}


class BackendAuthServer(LoopbackServer):
    """A running backend; stop it with ``stop()`` or by leaving a ``with`` block."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._keys = [_SigningKey.generate()]
        self._mode = "ok"
        self.calls = 0
        self.jwks_calls = 0
        # The W3C trace context each auth request carried ("" for none).
        self.traceparents: list[str] = []
        super().__init__(_Handler)
        self.issuer = self.url
        self.audience = AUDIENCE
        self.url = self.issuer + AUTH_PATH
        self.jwks_url = self.issuer + JWKS_PATH

    def issue_token(
        self,
        user_id: str,
        *,
        permissions: list[str],
        tenant_id: str = "",
        clearance_level: str | int = "",
        expires_in: int = 300,
        workspaces: list[str] | None = None,
    ) -> str:
        """A token this backend accepts until ``expires_in`` seconds from now. With
        ``workspaces``, the answer lists them as the user's besides their own."""
        with self._lock:
            key = self._keys[-1]
        return self._sign(
            key, user_id, permissions, tenant_id, clearance_level, expires_in, workspaces
        )

    def forge_token(
        self,
        user_id: str,
        *,
        permissions: list[str],
        tenant_id: str = "",
        clearance_level: str | int = "",
        expires_in: int = 300,
    ) -> str:
        """The same claims and key id, signed by a key this backend does not know."""
        with self._lock:
            kid = self._keys[-1].kid
        impostor = _SigningKey(kid, ec.generate_private_key(ec.SECP256R1()))
        return self._sign(impostor, user_id, permissions, tenant_id, clearance_level, expires_in)

    def rotate_key(self) -> None:
        """Sign new tokens with a fresh key; the old one stays published and valid."""
        with self._lock:
            self._keys.append(_SigningKey.generate())

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        with self._lock:
            self._mode = mode

    def stop(self) -> None:
        """Stop serving, cutting short any answer held back in "slow" mode."""
        self._stopping.set()
        super().stop()

    def _sign(
        self,
        key: _SigningKey,
        user_id: str,
        permissions: list[str],
        tenant_id: str,
        clearance_level: str | int,
        expires_in: int,
        workspaces: list[str] | None = None,
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user_id,
            "iat": now,
            "exp": now + expires_in,
            "tenant_id": tenant_id,
            "clearance_level": clearance_level,
            "permissions": permissions,
        }
        if workspaces is not None:
            claims["workspaces"] = workspaces
        return jwt.encode(claims, key.private, algorithm="ES256", headers={"kid": key.kid})

    def _answer_auth(self, authorization: str | None, traceparent: str) -> tuple[int, bytes]:
        with self._lock:
            self.calls += 1
            self.traceparents.append(traceparent)
            mode = self._mode
            keys = {key.kid: key for key in self._keys}
        if mode == "slow":
            self._stopping.wait(SLOW_SECONDS)
        if mode == "server_error":
            return 500, b'{"error":"internal"}'
        if mode == "garbage":
            return 200, b"<html>surprise</html>"
        if mode == "incomplete":
            return 200, b'{"permissions":[]}'
        if mode == "forbidden":
            return 403, b'{"error":"forbidden"}'
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return 401, b'{"error":"missing bearer token"}'
        try:
            key = keys[str(jwt.get_unverified_header(token).get("kid"))]
            claims = jwt.decode(
                token,
                key.private.public_key(),
                algorithms=["ES256"],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["iss", "aud", "sub", "exp", "iat"]},
            )
        except (jwt.PyJWTError, KeyError, TypeError):
            return 401, b'{"error":"invalid token"}'
        answer = {
            "user_id": claims["sub"],
            "tenant_id": claims.get("tenant_id", ""),
            "clearance_level": claims.get("clearance_level", ""),
            "permissions": claims.get("permissions", []),
            "expires_at": claims["exp"],
        }
        if "workspaces" in claims:
            answer["workspaces"] = claims["workspaces"]
        return 200, json.dumps(answer).encode()

    def _answer_jwks(self) -> tuple[int, bytes]:
        with self._lock:
            self.jwks_calls += 1
            keys = [key.jwk() for key in self._keys]
        return 200, json.dumps({"keys": keys}).encode()


class _Handler(BaseHTTPRequestHandler):
    # A client that connects and sends nothing cannot hold a thread past this.
    timeout = 10

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        backend: BackendAuthServer = owner(self)
        if self.path == AUTH_PATH:
            status, body = backend._answer_auth(
                self.headers.get("Authorization"), self.headers.get("traceparent", "")
            )
        elif self.path == JWKS_PATH:
            status, body = backend._answer_jwks()
        else:
            status, body = 404, b'{"error":"not found"}'
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except ConnectionError:
            pass  # the client gave up waiting, as it should in "slow" mode


def start_backend_auth_server() -> BackendAuthServer:
    """Start a backend on 127.0.0.1 with a free port and a fresh signing key."""
    return BackendAuthServer()
