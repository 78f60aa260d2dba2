"""A real HTTP API on loopback standing in for the APIs the example MCP server's tools call.

- ``POST /gliding`` (the operations API): answers the JSON it was sent, with
  ``"glided"`` for ``customer_ids``; a customer id ``"fail"`` makes it answer 500.
- ``GET /contacts?q=...`` (the CRM API): ``{"records": [...]}``; ``q=fail`` answers 500,
  and ``q=hold`` answers only once ``release()`` is called, so a call can be
  cancelled while its tool waits on the API.

Every request is kept in ``requests`` (method, path, the bearer token it
carried, its JSON body), so a test can check the credential each tool sent.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.loopback import LoopbackServer, owner

__all__ = ["FAIL", "HOLD", "Received", "UpstreamApi"]

# The input that makes either API fail, so a tool raises after it got credentials.
FAIL = "fail"
# The query the CRM API holds until released.
HOLD = "hold"
# How long a held request waits for release() at most, so a failed test cannot hang the server.
HOLD_LIMIT_S = 30.0


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    bearer: str
    body: Any


class UpstreamApi(LoopbackServer):
    """Stop it with ``stop()`` or by leaving a ``with`` block."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[Received] = []
        # Set when a held request has arrived; the test then knows the tool is waiting on us.
        self.holding = threading.Event()
        self._released = threading.Event()
        super().__init__(_Handler)

    def release(self) -> None:
        """Let held requests (and any later ones) answer."""
        self._released.set()

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._requests)

    def last(self, path: str) -> Received:
        """The latest request to ``path``."""
        return next(r for r in reversed(self.requests) if urlsplit(r.path).path == path)

    def _record(self, received: Received) -> None:
        with self._lock:
            self._requests.append(received)


class _Handler(BaseHTTPRequestHandler):
    timeout = 10

    def log_message(self, *args: object) -> None:
        pass

    def _received(self, body: Any) -> Received:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        received = Received(
            self.command, self.path, token if scheme.lower() == "bearer" else "", body
        )
        upstream: UpstreamApi = owner(self)
        upstream._record(received)
        return received

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"null")
        self._received(body)
        if urlsplit(self.path).path != "/gliding":
            self._reply(404, {"error": "not found"})
        elif FAIL in body.get("customer_ids", []):
            self._reply(500, {"error": "gliding failed"})
        else:
            self._reply(
                200,
                {
                    "glided": body["customer_ids"],
                    "tenant_id": body.get("tenant_id"),
                    "clearance_level": body.get("clearance_level"),
                },
            )

    def do_GET(self) -> None:
        self._received(None)
        parts = urlsplit(self.path)
        query = parse_qs(parts.query).get("q", [""])[0]
        if parts.path != "/contacts":
            self._reply(404, {"error": "not found"})
        elif query == FAIL:
            self._reply(500, {"error": "search failed"})
        elif query == HOLD:
            upstream: UpstreamApi = owner(self)
            upstream.holding.set()
            upstream._released.wait(HOLD_LIMIT_S)
            with contextlib.suppress(ConnectionError):  # the cancelled tool has hung up
                self._reply(200, {"records": []})
        else:
            self._reply(200, {"records": [{"name": f"{query} Example", "email": "x@example.com"}]})
