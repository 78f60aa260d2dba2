"""A provider's token endpoint for the scale bench: uvicorn serving a bare ASGI app.

Every ``POST /token`` with ``grant_type=refresh_token`` answers a fresh access
token and a rotated refresh token (RFC 6749 §6), valid an hour. It counts the
grants it answered, the distinct refresh tokens redeemed, and when the first
and the last grant arrived; ``GET /count`` returns those as JSON. Run in its
own process so that it competes with the broker for the CPU, never for a GIL:

    python bench/_token_server.py --port 18000
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


class TokenEndpoint:
    def __init__(self) -> None:
        self.grants = 0
        self.redeemed: set[str] = set()
        self.first = 0.0
        self.last = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET" and scope["path"] == "/count":
            await _answer(send, 200, self._count())
            return
        if scope["method"] != "POST" or scope["path"] != "/token":
            await _answer(send, 404, {"error": "not_found"})
            return
        form = dict(parse_qsl((await _body(receive)).decode()))
        refresh_token = form.get("refresh_token", "")
        if form.get("grant_type") != "refresh_token" or not refresh_token:
            await _answer(send, 400, {"error": "unsupported_grant_type"})
            return
        now = time.time()
        self.first = self.first or now
        self.last = now
        self.grants += 1
        self.redeemed.add(refresh_token)
        await _answer(
            send,
            200,
            {
                "access_token": f"at-{secrets.token_urlsafe(12)}",
                "refresh_token": f"rt-{secrets.token_urlsafe(12)}",
                "token_type": "Bearer",
                "expires_in": 3600,
            },
        )

    def _count(self) -> dict[str, float]:
        return {
            "grants": self.grants,
            "distinct_refresh_tokens": len(self.redeemed),
            "first": self.first,
            "last": self.last,
        }


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        TokenEndpoint(),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
