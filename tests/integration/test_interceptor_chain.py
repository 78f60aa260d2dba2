"""The shared interceptors run as one chain that wraps each method once, and
metrics can be turned off (to price them) without touching the rest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from nexus_common import ApiKeySet, build_server, internal_authenticator, serve_metrics
from nexus_common._interceptors import Behavior, InterceptorChain, UnaryInterceptor

from tests.conftest import INTERNAL_TOKEN
from tests.support.metrics import sample_sum


class CountingWraps(UnaryInterceptor):
    def __init__(self) -> None:
        self.wraps: list[str] = []
        self.calls = 0

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        self.wraps.append(method)

        async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.calls += 1
            return await behavior(request, context)

        return counted


@pytest.fixture
async def health_server() -> AsyncIterator[tuple[grpc.aio.Server, int, CountingWraps]]:
    counting = CountingWraps()
    server = grpc.aio.server(interceptors=[InterceptorChain([counting])])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield server, port, counting
    await server.stop(0)


async def test_a_method_is_wrapped_on_its_first_call_only(
    health_server: tuple[grpc.aio.Server, int, CountingWraps],
) -> None:
    _, port, counting = health_server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(5):
            await stub.Check(health_pb2.HealthCheckRequest())
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await channel.unary_unary("/no.Such/Method")(b"")
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert counting.wraps == ["/grpc.health.v1.Health/Check"]
    assert counting.calls == 5


async def _health_checks_counted(metrics: bool | None) -> float:
    endpoint = serve_metrics("127.0.0.1:0")
    server = build_server(
        address="127.0.0.1:0",
        registrars=[],
        service_names=[],
        authenticate=internal_authenticator(ApiKeySet.from_spec(f"test:{INTERNAL_TOKEN}")),
        metrics=metrics,
    )
    await server.start()
    url = f"http://127.0.0.1:{endpoint.port}/metrics"
    labels = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check", "grpc_code": "OK"}
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            before = sample_sum((await http.get(url)).text, "grpc_server_handled_total", **labels)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            after = sample_sum((await http.get(url)).text, "grpc_server_handled_total", **labels)
    finally:
        await server.server.stop(0)
        endpoint.stop()
    return after - before


async def test_calls_are_counted_unless_metrics_are_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert await _health_checks_counted(metrics=None) == 1
    assert await _health_checks_counted(metrics=False) == 0
    monkeypatch.setenv("NEXUS_METRICS", "false")
    assert await _health_checks_counted(metrics=None) == 0
