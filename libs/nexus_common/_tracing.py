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
secret) and peer addresses; never metadata values or request data. HTTP calls
out of Nexus (providers' token endpoints, the customer's backend) are spans
too, with method, host, path and status: never a query string or a body.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping
from urllib.parse import urlsplit

import grpc
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import (
    aio_client_interceptors,
    aio_server_interceptor,
    filters,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

__all__ = [
    "client_tracing",
    "current_trace_id",
    "outbound_span",
    "pass_trace_context",
    "server_tracing",
    "tracing",
]

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


@contextlib.contextmanager
def outbound_span(name: str, method: str, url: str) -> Iterator[Span]:
    """A client span around an HTTP call leaving Nexus. An exception marks it
    failed by its type alone: some exceptions' text quotes a URL."""
    parts = urlsplit(url)
    attributes: dict[str, str | int] = {
        "http.request.method": method,
        "server.address": parts.hostname or "",
        "url.path": parts.path or "/",
    }
    if parts.port:
        attributes["server.port"] = parts.port
    with _tracer().start_as_current_span(
        name,
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except Exception as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


def pass_trace_context(headers: MutableMapping[str, str]) -> None:
    """Add the current trace context (``traceparent``) to an outgoing request's
    headers, for a service of the operator's own to join the trace."""
    propagate.inject(headers)


def _tracer() -> trace.Tracer:
    return trace.get_tracer("nexus")
