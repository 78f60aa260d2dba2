"""The floor: a trivial ``grpc.aio`` server, in its own process, that answers every
unary method with an empty message (a valid answer of any protobuf type).

Because it answers any method, the floor is loaded with exactly the request the
measured path gets (same method path, body and headers), and Envoy's own config,
pointed at it instead of the gateway, is the REST floor: the same routes, filters and
JSON transcoding, with no work behind them.

    python -m bench.echo_server PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import grpc


async def _empty(request: bytes, context: Any) -> bytes:
    return b""


class _AnyUnary(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped
    """Every method, requests and answers left as bytes: no protobuf work at all."""

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(_empty)


async def serve(port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_AnyUnary(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await run_until_signalled(server)


async def run_until_signalled(server: grpc.aio.Server) -> None:
    """Serve until SIGTERM or SIGINT, then stop."""
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await server.stop(grace=1)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
