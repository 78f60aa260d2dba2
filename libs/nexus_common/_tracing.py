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

The gRPC spans are made here rather than by OpenTelemetry's gRPC
instrumentation, with the same names, kinds and ``rpc.*`` attributes: its
interceptors cost a fifth of a hop's throughput (a generic filter evaluated on
every call, a proxy around every servicer context, and on the client side
grpc.aio's slow path for intercepted calls).

Spans carry method names, status codes, error messages (which never hold a
secret) and peer addresses; never metadata values or request data. HTTP calls
out of Nexus (providers' token endpoints, the customer's backend) are spans
too, with method, host, path and status: never a query string or a body.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any
from urllib.parse import unquote, urlsplit

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

__all__ = [
    "client_span",
    "client_status",
    "current_trace_id",
    "outbound_span",
    "pass_trace_context",
    "server_span",
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
    provider = TracerProvider(resource=_Resource(Resource.create(default)))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    try:
        yield
    finally:
        provider.shutdown()


# Codes that mean the server failed, not the caller: these mark a server span
# failed, as OpenTelemetry's gRPC instrumentation does.
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_STATUS_CODE = "rpc.grpc.status_code"


def _rpc_attributes(method: str) -> dict[str, Any]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _peer_attributes(peer: str) -> dict[str, Any]:
    """``ipv4:127.0.0.1:5000`` or ``ipv6:[::1]:5000`` as net.peer.* attributes."""
    kind, _, address = peer.partition(",")[0].partition(":")
    ip, _, port = address.rpartition(":")
    if kind not in ("ipv4", "ipv6") or not ip:
        return {}
    ip = unquote(ip)
    attributes: dict[str, Any] = {"net.peer.ip": ip, "net.peer.port": port}
    if ip in ("[::1]", "127.0.0.1"):
        attributes["net.peer.name"] = "localhost"
    return attributes


Ended = Callable[[str], None]


class _Resource(Resource):
    """The process's resource, its hash worked out once. The OTLP exporter groups every
    span it sends by resource, and a Resource hashes by dumping its attributes as JSON:
    about a seventh of exporting a span. A resource never changes once made."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


@contextlib.contextmanager
def server_span(
    method: str, metadata: Iterable[tuple[str, Any]] | None, peer: str
) -> Iterator[Ended]:
    """A server span for one call, the caller's trace context (``traceparent``,
    baggage) made current; the block calls the yielded function with the name
    of the call's final status code."""
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    token = otel_context.attach(propagate.extract(carrier))
    try:
        attributes = _rpc_attributes(method)
        attributes.update(_peer_attributes(peer))
        with _tracer().start_as_current_span(
            method,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:

            def ended(outcome: str) -> None:
                if not span.is_recording():
                    return
                code = grpc.StatusCode.__members__.get(outcome, grpc.StatusCode.UNKNOWN)
                span.set_attribute(_STATUS_CODE, code.value[0])
                if code in _SERVER_FAULTS:
                    span.set_status(Status(StatusCode.ERROR, outcome))

            yield ended
    finally:
        otel_context.detach(token)


@contextlib.contextmanager
def client_span(method: str, metadata: list[tuple[str, str]]) -> Iterator[Span]:
    """A client span around a call to ``method``; its context is added to
    ``metadata`` for the callee to continue. Set its status code with
    ``client_status``."""
    with _tracer().start_as_current_span(
        method,
        kind=SpanKind.CLIENT,
        attributes=_rpc_attributes(method),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        metadata.extend(carrier.items())
        yield span


def client_status(span: Span, code: grpc.StatusCode) -> None:
    """Record how a call ended on its client span; any failure marks it failed."""
    if span.is_recording():
        span.set_attribute(_STATUS_CODE, code.value[0])
        if code != grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))


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


_TRACERS: dict[object, trace.Tracer] = {}


def _tracer() -> trace.Tracer:
    """The tracer of the current provider: an SDK provider builds a new tracer
    on every ``get_tracer``, far too slow for every call."""
    provider = trace.get_tracer_provider()
    tracer = _TRACERS.get(provider)
    if tracer is None:
        _TRACERS.clear()  # the provider changed (tests set their own)
        tracer = _TRACERS[provider] = provider.get_tracer("nexus")
    return tracer
