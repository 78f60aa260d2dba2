"""A TCP proxy on 127.0.0.1 that a test can cut, to make a real network fault.

    with TcpProxy("127.0.0.1", 5432) as proxy:
        # point a client at 127.0.0.1:proxy.port
        proxy.cut()      # every open connection is reset; new ones are reset at once
        proxy.restore()  # new connections reach the upstream again
        proxy.stall()    # open connections go silent (no FIN, no RST); new ones work

It runs its own event loop in a background thread, so it keeps forwarding
whatever the test's loop is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from tests.support.processes import StopsOnExit

__all__ = ["TcpProxy"]

_CHUNK = 64 * 1024


class TcpProxy(StopsOnExit):
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._cut = False
        self._open: set[asyncio.StreamWriter] = set()
        self._stalled: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        self.port: int = self._server.sockets[0].getsockname()[1]
        self.accepted = 0

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._cut:
            client_w.transport.abort()
            return
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_w.transport.abort()
            return
        self.accepted += 1
        self._open.update((client_w, upstream_w))
        try:
            await asyncio.gather(self._pipe(client_r, upstream_w), self._pipe(upstream_r, client_w))
        finally:
            for writer in (client_w, upstream_w):
                self._open.discard(writer)
                self._stalled.discard(writer)
                writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(_CHUNK):
                if writer in self._stalled:
                    continue  # read, so each side's sends still succeed, and dropped
                writer.write(data)
                await writer.drain()
        writer.transport.abort()

    def cut(self) -> None:
        """Reset every open connection, and each new one until ``restore``."""

        def reset() -> None:
            self._cut = True
            for writer in list(self._open):
                writer.transport.abort()

        self._loop.call_soon_threadsafe(reset)

    def stall(self) -> None:
        """Stop forwarding on every open connection, in both directions and
        without a word: each end's sends still succeed and nothing arrives, as
        when a NAT forgets a connection or a proxy fails over. They stay so;
        new connections are forwarded. In effect when it returns."""

        async def stall() -> None:
            self._stalled.update(self._open)

        asyncio.run_coroutine_threadsafe(stall(), self._loop).result(10)

    def restore(self) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "_cut", False)

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            for writer in list(self._open):
                writer.transport.abort()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
