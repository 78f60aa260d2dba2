"""Distributed tracing with OpenTelemetry.

Every RPC a service answers or makes is a span, and the W3C trace context
travels in gRPC metadata, so one REST or gRPC request is one trace across
gateway, broker and policy; a caller's own ``traceparent`` is continued.

OpenTelemetry's standard variables configure it: an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
turns export on; ``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``,
``OTEL_RESOURCE_ATTRIBUTES`` and the exporter's settings apply as documented
there. Without an endpoint nothing is recorded, yet a caller's trace context is
still passed on to the next service.

Spans carry method names, status codes, error messages (which never hold a
secret) and peer addresses; never metadata values or request data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import grpc
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import (
    aio_client_interceptors,
    aio_server_interceptor,
    filters,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

__all__ = ["client_tracing", "current_trace_id", "server_tracing", "tracing"]

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


@contextlib.contextmanager
def tracing(service: str, environ: Mapping[str, str]) -> Iterator[None]:
    """Export this process's spans while the block runs, when an endpoint is
    configured; on leaving, spans still buffered are sent."""
    disabled = environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if disabled or not any(environ.get(name, "").strip() for name in _ENDPOINTS):
        yield
        return
    # OTEL_SERVICE_NAME, when set, names the service instead.
    default = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: f"nexus-{service}"}
    provider = TracerProvider(resource=Resource.create(default))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    try:
        yield
    finally:
        provider.shutdown()


def server_tracing() -> grpc.aio.ServerInterceptor:
    """A server span per call, a child of the caller's span; probes make none."""
    probes = filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection"))
    return aio_server_interceptor(filter_=filters.negate(probes))


def client_tracing() -> list[grpc.aio.ClientInterceptor]:
    """A client span per call, whose context the callee receives."""
    return list(aio_client_interceptors())


def current_trace_id() -> str | None:
    """The trace the running code belongs to, as 32 hex digits, if any."""
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None
