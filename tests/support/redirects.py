"""Two real HTTP servers on loopback, on different ports (so different
origins): one that answers every request with a redirect to the other, and the
other, which records the headers of whatever reaches it."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler

from tests.support.loopback import LoopbackServer, owner

__all__ = ["Elsewhere", "Redirector"]


class Elsewhere(LoopbackServer):
    """Records each request's headers, lower-cased, and answers ``{}``."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            # WebSocket clients read only HTTP/1.1 answers to their handshake.
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner(self).seen.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_POST = do_DELETE = do_GET

        super().__init__(Handler)


class Redirector(LoopbackServer):
    """Answers every request with ``status`` and ``Location: <to><path>``."""

    def __init__(self, to: str, status: int = 302) -> None:
        class Handler(BaseHTTPRequestHandler):
            # WebSocket clients read only HTTP/1.1 answers to their handshake.
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(status)
                self.send_header("Location", to + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_DELETE = do_GET

        super().__init__(Handler)
