"""Cross-cutting gRPC concerns: tracing, request logging, metrics, error
mapping, authentication and request limits.

They run as one gRPC interceptor, ``InterceptorChain``: grpc.aio awaits every
interceptor on every call and each one builds a new method handler, so the
chain composes the wrapped behaviour once per method instead and hands gRPC the
same handler on every later call.

Errors become a gRPC status in exactly one place, ``ErrorMappingInterceptor``:
a ``NexusError`` aborts with a ``google.rpc.Status`` holding one ``ErrorInfo``;
anything else is logged and answered ``INTERNAL`` without detail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ._auth import Authenticator, current_caller
from ._errors import (
    ERROR_DOMAIN,
    Internal,
    MalformedRequest,
    NexusError,
    RequestTooLarge,
    Unauthenticated,
    ValidationFailed,
)
from ._tls import peer_service
from ._tracing import current_trace_id, server_span

__all__ = [
    "MAX_ID_CHARS",
    "MAX_PAGE_TOKEN_CHARS",
    "PUBLIC_METHOD_PREFIXES",
    "AuthInterceptor",
    "ErrorMappingInterceptor",
    "InterceptorChain",
    "LoggingInterceptor",
    "ObservingInterceptor",
    "RequestLimitsInterceptor",
    "TracingInterceptor",
    "UnaryInterceptor",
    "call_outcome",
    "to_grpc_status",
]

log = logging.getLogger("nexus.rpc")

# Probes and tooling must reach these without a credential.
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
# A server stream's behaviour: an async generator, or a coroutine that writes
# with ``context.write`` (grpc's own health Watch does).
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], Any]

# Every id Nexus stores fits in 255 characters; a longer one names nothing.
MAX_ID_CHARS = 255
# Page tokens Nexus issues are far shorter; a longer one is not one of them.
MAX_PAGE_TOKEN_CHARS = 1024
# OAuth client ids are the provider's, not Nexus's, and some are long.
_NOT_NEXUS_IDS = frozenset({"client_id"})


def _packed(detail: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def to_grpc_status(error: NexusError) -> grpc.Status:
    """The status for ``error``: one ErrorInfo, and a RetryInfo when the
    error says when to try again."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=dict(error.metadata)
    )
    details = [_packed(info)]
    if error.retry_after_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_seconds * 1e9))
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    code = grpc.StatusCode[error.grpc_status]
    status = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    return rpc_status.to_status(status)


def call_outcome(context: grpc.aio.ServicerContext, cancelled: bool) -> str:
    """The status code a finished call was answered with, by name."""
    code = context.code()
    if code is None or code == grpc.StatusCode.OK:
        return "CANCELLED" if cancelled else "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


async def _responses(
    behavior: StreamBehavior, request: Any, context: grpc.aio.ServicerContext
) -> AsyncIterator[Any]:
    """What a server stream sends, whichever way its behaviour is written."""
    sent = behavior(request, context)
    if hasattr(sent, "__aiter__"):
        async for response in sent:
            yield response
    else:
        await sent


class UnaryInterceptor:
    """One layer of ``InterceptorChain``: wraps the behaviour of unary-unary
    methods. Server streams pass through unless ``wrap_stream`` is overridden
    (authentication and error mapping do); client-streaming methods are served
    only if no layer refuses them."""

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        raise NotImplementedError

    def wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        return behavior

    def deserializer(
        self, deserializer: Callable[[bytes], Any] | None
    ) -> Callable[[bytes], Any] | None:
        """The request deserializer the wrapped behaviour expects."""
        return deserializer

    def refuses_client_streams(self, method: str) -> bool:
        return False


class InterceptorChain(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Layers run as one, the first outermost. Each method's behaviour is
    wrapped once, on its first call, and the handler kept: the service's
    handlers are fixed objects, so a method's kept handler is used as long as
    gRPC finds the same one underneath."""

    def __init__(self, interceptors: Sequence[UnaryInterceptor]) -> None:
        self._interceptors = tuple(interceptors)
        # method -> (the service's handler, the wrapped one); one entry per
        # method served, since gRPC finds no handler for an unknown method.
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        kept = self._handlers.get(method)
        if kept is not None and kept[0] is handler:
            return kept[1]
        wrapped = self._wrapped(method, handler)
        self._handlers[method] = (handler, wrapped)
        return wrapped

    def _wrapped(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        layers = reversed(self._interceptors)
        if handler.unary_unary is not None:
            behavior = handler.unary_unary
            deserializer = handler.request_deserializer
            for interceptor in layers:
                behavior = interceptor.wrap(method, behavior)
                deserializer = interceptor.deserializer(deserializer)
            return grpc.unary_unary_rpc_method_handler(
                behavior,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            streamed = handler.unary_stream
            for interceptor in layers:
                streamed = interceptor.wrap_stream(method, streamed)
            if streamed is handler.unary_stream:
                return handler
            return grpc.unary_stream_rpc_method_handler(
                streamed,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if any(interceptor.refuses_client_streams(method) for interceptor in self._interceptors):
            if handler.stream_unary is not None:
                return grpc.stream_unary_rpc_method_handler(_refuse_unguarded)
            return grpc.stream_stream_rpc_method_handler(_refuse_unguarded)
        return handler


class TracingInterceptor(UnaryInterceptor):
    """A server span per call, a child of the caller's span; probes make none."""

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        if method.startswith(PUBLIC_METHOD_PREFIXES):
            return behavior

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            cancelled = False
            with server_span(method, context.invocation_metadata(), context.peer()) as ended:
                try:
                    return await behavior(request, context)
                except asyncio.CancelledError:
                    cancelled = True
                    raise
                finally:
                    ended(call_outcome(context, cancelled))

        return traced


class ObservingInterceptor(UnaryInterceptor):
    """Calls ``finished`` once per call, with how it ended and how long it took."""

    def observes(self, method: str) -> bool:
        return True

    def finished(self, method: str, outcome: str, seconds: float) -> None:
        raise NotImplementedError

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        if not self.observes(method):
            return behavior

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            cancelled = False
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                cancelled = True
                raise
            finally:
                self.finished(
                    method, call_outcome(context, cancelled), time.perf_counter() - started
                )

        return observed


class LoggingInterceptor(ObservingInterceptor):
    """One line per call: method, outcome, duration, caller and trace; never payloads."""

    def observes(self, method: str) -> bool:
        return not method.startswith(PUBLIC_METHOD_PREFIXES)  # probes would drown the log

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        observed = super().wrap(method, behavior)

        async def logged(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # The authenticator sets the caller for this call alone.
            current_caller.set(None)
            return await observed(request, context)

        return logged

    def finished(self, method: str, outcome: str, seconds: float) -> None:
        if not log.isEnabledFor(logging.INFO):
            return  # the caller and trace would be looked up for nothing
        log.info(
            "rpc method=%s outcome=%s ms=%.1f caller=%s trace=%s",
            method,
            outcome,
            seconds * 1000,
            current_caller.get() or "-",
            current_trace_id() or "-",
        )


def _status_of(exc: Exception, method: str) -> grpc.Status:
    """A NexusError's own status; anything else is logged and answered INTERNAL."""
    if isinstance(exc, NexusError):
        return to_grpc_status(exc)
    log.exception("unhandled error in %s", method)
    return to_grpc_status(Internal("internal error"))


class ErrorMappingInterceptor(UnaryInterceptor):
    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        async def mapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                status = _status_of(exc, method)
            await context.abort(status.code, status.details, status.trailing_metadata)

        return mapped

    def wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        if method.startswith(PUBLIC_METHOD_PREFIXES):
            return behavior

        async def mapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for response in _responses(behavior, request, context):
                    yield response
                return
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                status = _status_of(exc, method)
            await context.abort(status.code, status.details, status.trailing_metadata)

        return mapped


def _strings(message: Message, path: str = "") -> Iterator[tuple[str, str, str]]:
    """Every string in a message, nested ones too: (field name, its path, value)."""
    for field, value in message.ListFields():
        where = f"{path}{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            items: list[Any] = [v for pair in value.items() for v in pair]
        else:
            items = list(value) if field.is_repeated else [value]
        for item in items:
            if isinstance(item, str):
                yield field.name, where, item
            elif isinstance(item, Message):
                yield from _strings(item, f"{where}.")


def _check_strings(message: Message) -> None:
    """One walk over every string in the request: refuses NUL (PostgreSQL text
    cannot hold it), and ids and page tokens longer than anything Nexus issues
    or stores, before they reach a query or are echoed back in an error."""
    for name, where, value in _strings(message):
        if "\x00" in value:
            raise ValidationFailed(f"{where} must not contain a NUL character", field=where)
        is_id = name == "id" or (name.endswith("_id") and name not in _NOT_NEXUS_IDS)
        if is_id and len(value) > MAX_ID_CHARS:
            raise ValidationFailed(f"{where} is longer than {MAX_ID_CHARS} characters", field=where)
        if name == "page_token" and len(value) > MAX_PAGE_TOKEN_CHARS:
            raise ValidationFailed(
                f"{where} is longer than {MAX_PAGE_TOKEN_CHARS} characters", field=where
            )


class _Undecodable:
    """Stands in for a request whose bytes did not decode, so that the call
    still runs the interceptors and is answered with a reason: a deserializer
    that raises makes gRPC answer UNKNOWN before any interceptor runs."""

    def __init__(self, message_type: str) -> None:
        self.message_type = message_type


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    message_type = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = message_type.full_name if message_type is not None else "the request message"

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, RecursionError, UnicodeDecodeError):
            return _Undecodable(name)

    return deserialize


class RequestLimitsInterceptor(UnaryInterceptor):
    """Refuses requests that do not decode, are over the size limit, hold ids
    longer than any Nexus stores, or text no database can store: PostgreSQL
    cannot hold NUL in text, so without this the same request would succeed on
    SQLite and fail as an internal error on PostgreSQL. gRPC's own receive
    limit sits higher and only stops what would exhaust memory."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes

    def deserializer(
        self, deserializer: Callable[[bytes], Any] | None
    ) -> Callable[[bytes], Any] | None:
        return _tolerant(deserializer)

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                raise MalformedRequest(
                    f"the request could not be decoded as a {request.message_type}"
                )
            if request.ByteSize() > self._max_bytes:
                raise RequestTooLarge(f"the request is larger than {self._max_bytes // 1024} KiB")
            _check_strings(request)
            return await behavior(request, context)

        return limited


class AuthInterceptor(UnaryInterceptor):
    """Establishes the caller for every non-public method, or refuses the call.

    Server streams are authenticated like unary calls. A client-streaming
    method that is not public is refused outright: nothing here would check
    its caller, and failing closed keeps a new one from going out unguarded.
    """

    def __init__(self, authenticate: Authenticator) -> None:
        self._authenticate = authenticate

    def refuses_client_streams(self, method: str) -> bool:
        # Nothing here would check such a method's caller: a new one must not
        # go out unguarded.
        return not method.startswith(PUBLIC_METHOD_PREFIXES)

    async def _caller(self, method: str, context: grpc.aio.ServicerContext) -> None:
        metadata = {
            key: value
            for key, value in (context.invocation_metadata() or ())
            if isinstance(value, str)
        }
        # Each RPC runs in its own task, so the caller stays set for the
        # outer interceptors (logging) and never leaks into another call.
        current_caller.set(await self._authenticate(method, metadata, peer_service(context)))

    def wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        if method.startswith(PUBLIC_METHOD_PREFIXES):
            return behavior

        async def authenticated(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            await self._caller(method, context)
            async for response in _responses(behavior, request, context):
                yield response

        return authenticated

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        if method.startswith(PUBLIC_METHOD_PREFIXES):
            return behavior

        async def authenticated(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._caller(method, context)
            return await behavior(request, context)

        return authenticated


async def _refuse_unguarded(requests: Any, context: grpc.aio.ServicerContext) -> Any:
    status = to_grpc_status(Unauthenticated("this method takes no callers"))
    await context.abort(status.code, status.details, status.trailing_metadata)
