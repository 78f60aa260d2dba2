"""A real HTTP server standing in for the customer's app and a static-credential API.

- ``GET /done?...``: the app's return page; records the query it was sent. When
  a test sets ``confirm``, it also plays the app's side of connection
  confirmation: a landing with ``confirmation`` is confirmed only when the user
  of the browser's app session (cookie ``app_session``, see ``sessions``) owns
  the workspace the connection was asked for (``workspaces``).
- ``GET /api/me``: the provider API's "who am I", accepting only the key
  ``X-Api-Key: good-key`` or basic auth ``ada:lovelace``; ``me_calls`` counts
  the calls.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from tests.support.loopback import LoopbackServer

GOOD_API_KEY = "good-key"
GOOD_BASIC = ("ada", "lovelace")
SESSION_COOKIE = "app_session"


class AppServer(LoopbackServer):
    def __init__(self) -> None:
        self.landings: list[str] = []
        self.me_calls = 0
        # The app's sessions (cookie value -> user) and, per connection it asked
        # Nexus for, the workspace (user) it asked for.
        self.sessions: dict[str, str] = {}
        self.workspaces: dict[str, str] = {}
        # Confirms a connection at Nexus: (connection_id, code) -> HTTP status.
        self.confirm: Callable[[str, str], int] | None = None
        # (connection_id, "confirmed" | "refused" | "confirm failed: <status>")
        self.confirmations: list[tuple[str, str]] = []
        landings = self.landings
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, body: bytes = b"ok") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _user(self) -> str | None:
                cookie = SimpleCookie(self.headers.get("Cookie", ""))
                morsel = cookie.get(SESSION_COOKIE)
                return owner.sessions.get(morsel.value) if morsel is not None else None

            def _land(self) -> None:
                landings.append(self.path)
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                if owner.confirm is None or "confirmation" not in query:
                    self._reply(200, b"connected")
                    return
                connection_id = query.get("connection_id", "")
                user = self._user()
                if user is None or owner.workspaces.get(connection_id) != user:
                    # Not this user's connection: never confirm it.
                    owner.confirmations.append((connection_id, "refused"))
                    self._reply(403, b"this connection is not yours")
                    return
                status = owner.confirm(connection_id, query["confirmation"])
                outcome = "confirmed" if status == 200 else f"confirm failed: {status}"
                owner.confirmations.append((connection_id, outcome))
                self._reply(200 if status == 200 else 502, outcome.encode())

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/done":
                    self._land()
                elif path == "/api/me":
                    owner.me_calls += 1
                    basic = "Basic " + base64.b64encode(":".join(GOOD_BASIC).encode()).decode()
                    ok = self.headers.get("X-Api-Key") == GOOD_API_KEY or (
                        self.headers.get("Authorization") == basic
                    )
                    self._reply(200 if ok else 401)
                else:
                    self._reply(404)

        super().__init__(Handler)
