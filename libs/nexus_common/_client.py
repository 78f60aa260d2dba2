"""Calling another Nexus service: the internal token, the caller, and errors.

Over mutual TLS when the service has a certificate (``ServiceTls``). Only a
client with ``CallerProofs`` (the gateway's) names the caller it acts for;
any other calls as its own service.

An error status from the callee is passed on unchanged (same code, reason and
message), so a fault reads the same whichever service raised it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ._auth import CALLER_HEADER, CALLER_PROOF_HEADER, INTERNAL_TOKEN_HEADER, current_caller
from ._caller_proof import CallerProofs
from ._errors import DependencyUnavailable, Internal, NexusError, RemoteError
from ._settings import PEER_SILENCE_SECONDS
from ._tls import ServiceTls
from ._tracing import client_span, client_status

__all__ = ["InternalClient"]

Response = TypeVar("Response")

_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def _channel_options(keepalive_seconds: float) -> list[tuple[str, Any]]:
    """A target that resolves to several addresses (`dns:///` on a headless
    Service) gets a connection to each, and calls take turns: gRPC's default,
    pick_first, would send every call over one long-lived HTTP/2 connection to
    one replica. A connection silent for ``keepalive_seconds`` is pinged, and
    closed when the ping is unanswered as long again (gRPC core's keepalive):
    one that died without a word (a NAT or a proxy that forgot it) is replaced
    rather than holding the calls and the change feed until TCP gives up,
    which takes many minutes. The servers admit such pings (``build_server``)."""
    ms = int(keepalive_seconds * 1000)
    return [
        ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
        ("grpc.keepalive_time_ms", ms),
        ("grpc.keepalive_timeout_ms", ms),
        # What gRPC core enforces on an unanswered ping (its default is a minute).
        ("grpc.http2.ping_timeout_ms", ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _retry_delay(details: list[Any]) -> float | None:
    for detail in details:
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            return float(retry.retry_delay.ToNanoseconds()) / 1e9
    return None


def _method_path(method: Callable[..., Any]) -> str:
    """``/package.Service/Method`` of a grpc.aio stub method, for the span."""
    path = getattr(method, "_method", None)  # the multi-callable's own path
    if isinstance(path, bytes):
        return path.decode()
    return str(getattr(method, "__name__", "grpc"))


class InternalClient:
    """A channel to one internal service, with the token every call needs.

    Calls are spread over every address the target resolves to.
    """

    def __init__(
        self,
        service: str,
        target: str,
        token: str,
        timeout: float = 10.0,
        *,
        tls: ServiceTls | None = None,
        proofs: CallerProofs | None = None,
        keepalive_seconds: float = PEER_SILENCE_SECONDS,
    ) -> None:
        self.service = service
        # No client interceptors: grpc.aio runs intercepted calls on a much
        # slower path; the client span is made in ``_invoke`` instead.
        options = _channel_options(keepalive_seconds)
        self.channel = (
            tls.channel(service, target, options)
            if tls is not None
            else grpc.aio.insecure_channel(target, options=options)
        )
        self._token = token
        self._timeout = timeout
        self._proofs = proofs

    async def call(self, method: Callable[..., Awaitable[Response]], request: Any) -> Response:
        # Every hop of GetToken comes through here: no response headers are read.
        response, _ = await self._invoke(method, request, headers=False)
        return response

    async def call_with_headers(
        self, method: Callable[..., Awaitable[Response]], request: Any
    ) -> tuple[Response, dict[str, str]]:
        """The answer and the callee's initial metadata (its response headers)."""
        return await self._invoke(method, request, headers=True)

    async def _invoke(
        self, method: Callable[..., Awaitable[Response]], request: Any, *, headers: bool
    ) -> tuple[Response, dict[str, str]]:
        metadata = [(INTERNAL_TOKEN_HEADER, self._token)]
        path = _method_path(method)
        caller = current_caller.get()
        if caller is not None and self._proofs is not None:
            metadata.append((CALLER_HEADER, str(caller)))
            metadata.append((CALLER_PROOF_HEADER, self._proofs.prove(caller, path)))
        with client_span(path, metadata) as span:
            try:
                # A grpc.aio call: awaitable, and it also holds the response headers.
                call: Any = method(request, metadata=metadata, timeout=self._timeout)
                response: Response = await call
                received = await call.initial_metadata() if headers else ()
            except grpc.aio.AioRpcError as exc:
                client_status(span, exc.code())
                raise self._translate(exc) from exc
            client_status(span, grpc.StatusCode.OK)
        return response, {key: value for key, value in received or () if isinstance(value, str)}

    def _translate(self, exc: grpc.aio.AioRpcError) -> NexusError:
        status = rpc_status.from_call(exc)
        details = list(status.details) if status is not None else []
        for detail in details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                assert status is not None
                error = RemoteError(exc.code().name, info.reason, status.message, **info.metadata)
                error.retry_after_seconds = _retry_delay(details)
                return error
        if exc.code() in _UNREACHABLE:
            return DependencyUnavailable(f"the {self.service} service is unavailable; try again")
        return Internal(f"the {self.service} service failed")

    async def close(self) -> None:
        await self.channel.close()
