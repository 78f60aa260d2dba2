"""The shape's floor: a ``grpc.aio`` server in its own process that forwards every
unary call, as bytes, to the echo server over one channel, and answers with what came
back. It does no other work.

A gateway in front of a broker is this shape: two Python gRPC processes in a row, one
of them both server and client. Loaded with the very request a path gets, it measures
what that shape costs before any of Nexus's own work, so a path's figures can be read
against the best any two-process design in grpcio could do on this machine. It runs on
the services' event loop (``nexus_common.run_service``), so it stays their bound.

    python -m bench.relay_server PORT UPSTREAM_PORT
"""

from __future__ import annotations

import sys
from typing import Any

import grpc
from nexus_common import run_service

from bench.echo_server import run_until_signalled


class _Relay(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            upstream = self._channel.unary_unary(method)

            async def forward(request: bytes, context: Any) -> bytes:
                return bytes(await upstream(request))

            handler = self._handlers[method] = grpc.unary_unary_rpc_method_handler(forward)
        return handler


async def serve(port: int, upstream_port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{upstream_port}") as channel:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_Relay(channel),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await run_until_signalled(server)


if __name__ == "__main__":
    run_service(serve(int(sys.argv[1]), int(sys.argv[2])))
