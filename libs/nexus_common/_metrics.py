"""Prometheus metrics: a count and a latency for every RPC a service answers,
and the HTTP endpoint Prometheus scrapes.

RPC metric names and labels follow go-grpc-prometheus, so dashboards and alerts
written for gRPC services elsewhere work on these unchanged. Labels hold method
names, status codes and error reasons, never request data.
"""

from __future__ import annotations

import threading
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Histogram, start_http_server

from ._interceptors import ObservingInterceptor

__all__ = ["MetricsEndpoint", "MetricsInterceptor", "serve_metrics"]

_RPCS_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs answered by the server, by status code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
_RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from receiving an RPC to answering it.",
    ["grpc_type", "grpc_service", "grpc_method"],
    # From a cached decision (~1 ms) to a slow provider behind a refresh (seconds).
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class MetricsInterceptor(ObservingInterceptor):
    """Counts each call by its final status code and observes how long it took.

    Each method's labelled series are looked up once and kept: ``labels()``
    takes a lock and builds a key on every call."""

    def __init__(self) -> None:
        self._handled: dict[tuple[str, str], Any] = {}
        self._seconds: dict[str, Any] = {}

    def finished(self, method: str, outcome: str, seconds: float) -> None:
        handled = self._handled.get((method, outcome))
        if handled is None:
            handled = self._handled[method, outcome] = _RPCS_HANDLED.labels(
                "unary", *_service_and_name(method), outcome
            )
        handled.inc()
        observed = self._seconds.get(method)
        if observed is None:
            observed = self._seconds[method] = _RPC_SECONDS.labels(
                "unary", *_service_and_name(method)
            )
        observed.observe(seconds)


def _service_and_name(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class MetricsEndpoint:
    """``GET /metrics`` in Prometheus' text format, served by a background thread."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port: int = server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve_metrics(listen: str) -> MetricsEndpoint:
    """Serve the metrics on ``host:port`` (port 0 picks a free port)."""
    host, _, port = listen.rpartition(":")
    server, thread = start_http_server(int(port), host)
    return MetricsEndpoint(server, thread)
