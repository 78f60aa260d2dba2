"""A real HTTP server standing in for the customer's app and a static-credential API.

- ``GET /done?...``: the app's return page; records the query it was sent.
- ``GET /api/me``: the provider API's "who am I", accepting only the key
  ``X-Api-Key: good-key`` or basic auth ``ada:lovelace``; ``me_calls`` counts
  the calls.
"""

from __future__ import annotations

import base64
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from tests.support.loopback import LoopbackServer

GOOD_API_KEY = "good-key"
GOOD_BASIC = ("ada", "lovelace")


class AppServer(LoopbackServer):
    def __init__(self) -> None:
        self.landings: list[str] = []
        self.me_calls = 0
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

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/done":
                    landings.append(self.path)
                    self._reply(200, b"connected")
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
