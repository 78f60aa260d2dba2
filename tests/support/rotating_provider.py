"""An OAuth provider on loopback that rotates refresh tokens and counts their uses.

Every refresh answers with a new refresh token and spends the one sent: a
spent token is refused with ``invalid_grant``, as providers with reuse
detection do (RFC 9700 §4.14.2). Each token sent is counted, whatever the
answer, so a test sees any token sent twice. ``stall_next_refresh`` holds the
next refresh's answer back for that many seconds (the token counts as sent
the moment it arrives); ``drip_next_refresh`` sends the next refresh's answer
a byte at a time over that many seconds, which no per-read timeout catches;
``before_refresh_answer`` runs, once, just before the next refresh is
answered. Revocations (RFC 7009) are recorded in order. ``discovery``, when
set, is served as its OpenID Connect discovery document. ``granted_scope``,
when set, is the ``scope`` of every token answer whatever was asked (a
provider that ignores a narrower ask); ``asked_scopes`` records the ``scope``
of each refresh (None when absent). ``failing`` answers every refresh with
503, as a provider in an outage. ``code_exchanges`` counts authorization
code grants, whatever the answer.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

from tests.support.loopback import LoopbackServer, owner

__all__ = ["RotatingProvider"]


class RotatingProvider(LoopbackServer):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.uses: Counter[str] = Counter()
        self.issued: list[tuple[str, str]] = []  # (access token, refresh token), oldest first
        self.revoked: list[str] = []
        self.expires_in = 3600
        self.stall_next_refresh = 0.0
        self.drip_next_refresh = 0.0
        self.refresh_arrived = threading.Event()
        self.before_refresh_answer: Callable[[], None] | None = None
        self.discovery: dict[str, object] | None = None
        self.granted_scope: str | None = None
        self.asked_scopes: list[str | None] = []
        self.failing = False
        self.code_exchanges = 0
        self._live: set[str] = set()
        self._codes: set[str] = set()
        super().__init__(_Handler)

    @property
    def refresh_calls(self) -> int:
        with self.lock:
            return sum(self.uses.values())

    def issue(self) -> dict[str, object]:
        access, refresh = f"at-{secrets.token_hex(8)}", f"rt-{secrets.token_hex(8)}"
        with self.lock:
            self._live.add(refresh)
            self.issued.append((access, refresh))
        answer: dict[str, object] = {
            "access_token": access,
            "token_type": "Bearer",
            "refresh_token": refresh,
            "expires_in": self.expires_in,
        }
        if self.granted_scope is not None:
            answer["scope"] = self.granted_scope
        return answer

    def new_code(self) -> str:
        code = secrets.token_hex(8)
        with self.lock:
            self._codes.add(code)
        return code

    def redeem(self, code: str) -> bool:
        with self.lock:
            self.code_exchanges += 1
            found = code in self._codes
            self._codes.discard(code)
        return found

    def take_drip(self) -> float:
        with self.lock:
            drip, self.drip_next_refresh = self.drip_next_refresh, 0.0
        return drip

    def spend(self, refresh_token: str, scope: str | None = None) -> bool:
        """Count a use; True when the token was live (and is spent now)."""
        with self.lock:
            self.uses[refresh_token] += 1
            self.asked_scopes.append(scope)
            stall, self.stall_next_refresh = self.stall_next_refresh, 0.0
            hook, self.before_refresh_answer = self.before_refresh_answer, None
        self.refresh_arrived.set()
        time.sleep(stall)
        if hook is not None:
            hook()
        with self.lock:
            live = refresh_token in self._live
            self._live.discard(refresh_token)
        return live


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        document = owner(self).discovery
        if url.path == "/.well-known/openid-configuration" and document is not None:
            self._answer(200, document)
            return
        if url.path != "/authorize":
            self._answer(404, {"error": "not_found"})
            return
        code = owner(self).new_code()
        target = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]})
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        provider: RotatingProvider = owner(self)
        length = int(self.headers.get("Content-Length", "0"))
        form = dict(parse_qsl(self.rfile.read(length).decode()))
        path = urlsplit(self.path).path
        if path == "/revoke":
            with provider.lock:
                provider.revoked.append(form.get("token", ""))
            self._answer(200, {})
        elif path != "/token":
            self._answer(404, {"error": "not_found"})
        elif form.get("grant_type") == "authorization_code" and provider.redeem(
            form.get("code", "")
        ):
            self._answer(200, provider.issue())
        elif form.get("grant_type") == "refresh_token" and provider.failing:
            with provider.lock:
                provider.uses[form.get("refresh_token", "")] += 1
                provider.asked_scopes.append(form.get("scope"))
            self._answer(503, {"error": "temporarily_unavailable"})
        elif form.get("grant_type") == "refresh_token" and provider.spend(
            form["refresh_token"], form.get("scope")
        ):
            self._answer(200, provider.issue(), drip=provider.take_drip())
        else:
            self._answer(400, {"error": "invalid_grant"})

    def _answer(self, status: int, body: dict[str, object], drip: float = 0.0) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not drip:
                self.wfile.write(data)
                return
            for index in range(len(data)):
                self.wfile.write(data[index : index + 1])
                self.wfile.flush()
                time.sleep(drip / len(data))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting; what it was sent no longer matters
