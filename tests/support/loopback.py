"""A real HTTP server on 127.0.0.1 and a free port, served by a background thread."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.processes import StopsOnExit

__all__ = ["LoopbackServer", "owner"]


class LoopbackServer(StopsOnExit):
    """Stop it with ``stop()`` or by leaving a ``with`` block; afterwards its
    port refuses connections. Handlers reach the owner as ``self.server.owner``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._http.daemon_threads = True
        self._http.owner = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        # A short poll keeps stop() quick: shutdown() waits for the loop to notice.
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._http.shutdown()
            self._thread.join()
        self._http.server_close()


def owner(handler: BaseHTTPRequestHandler) -> Any:
    """The LoopbackServer a request arrived at."""
    return handler.server.owner  # type: ignore[attr-defined]
