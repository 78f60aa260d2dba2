"""A real OTLP/gRPC trace receiver on loopback, standing in for an
OpenTelemetry Collector: service processes export their spans to it as they
would in production, and tests read what arrived.

    with start_otlp_collector() as collector:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.endpoint
        ...
        spans = collector.wait_for(lambda spans: ..., timeout=30)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["ExportedSpan", "OtlpCollector", "start_otlp_collector"]


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    name: str
    kind: str  # SERVER, CLIENT, ...
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    attributes: dict[str, Any]


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


class OtlpCollector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, keep_spans: bool) -> None:
        self._keep_spans = keep_spans
        self._spans: list[ExportedSpan] = []
        self._arrived = threading.Condition()
        self.endpoint = ""
        self.count = 0

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        if not self._keep_spans:
            # A bench counts; decoding every span in Python would take the
            # CPU the services under measurement share with this process.
            arrived = sum(
                len(scope_spans.spans)
                for resource_spans in request.resource_spans
                for scope_spans in resource_spans.scope_spans
            )
            with self._arrived:
                self.count += arrived
            return trace_service_pb2.ExportTraceServiceResponse()
        received = []
        for resource_spans in request.resource_spans:
            service = str(_attributes(resource_spans.resource.attributes).get("service.name"))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ExportedSpan(
                            service=service,
                            name=span.name,
                            kind=trace_pb2.Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                        )
                    )
        with self._arrived:
            self._spans.extend(received)
            self.count += len(received)
            self._arrived.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[ExportedSpan]:
        with self._arrived:
            return list(self._spans)

    def wait_for(
        self, done: Callable[[list[ExportedSpan]], bool], timeout: float = 30.0
    ) -> list[ExportedSpan]:
        """The spans received, once ``done`` says they are enough (or at the timeout)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while not done(self._spans) and time.monotonic() < deadline:
                self._arrived.wait(deadline - time.monotonic())
            return list(self._spans)


@contextmanager
def start_otlp_collector(keep_spans: bool = True) -> Iterator[OtlpCollector]:
    """``keep_spans=False`` only counts them, for a bench."""
    collector = OtlpCollector(keep_spans)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    collector.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield collector
    finally:
        server.stop(0)
