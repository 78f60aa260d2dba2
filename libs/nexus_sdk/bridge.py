"""The Bridge: long-lived links to a provider that stay authenticated while the
connection's credentials rotate.

    from nexus_sdk import AsyncNexusClient, NexusClientOptions
    from nexus_sdk.bridge import Bridge

    async with AsyncNexusClient(NexusClientOptions(gateway_url=...)) as client:
        bridge = Bridge.standard(client, agent_labels={"agent_id": "my-agent"})
        await bridge.maintain_websocket("conn_01HXYZ...", "wss://stream.example.com", handler)

``maintain_websocket`` connects with the connection's current credentials and
keeps the link up. Before the credentials expire it fetches fresh ones and
opens a second socket with them, hands that one to the handler (``on_connect``
again, to resubscribe) and only then closes the old one: the stream never
stops for a rotation. A link that drops is reopened with exponential backoff
and jitter. It runs until cancelled, or raises ``BridgeError`` once retrying
cannot help: Nexus refuses the agent's key, the connection is unknown or needs
its user to reconnect, the endpoint refuses even fresh credentials, or it
closes the link for a protocol error.

``maintain_grpc`` runs your code over a gRPC channel whose every call carries
the connection's current credentials as metadata, renewed in the background.

Credentials never appear in logs or errors, and neither does an endpoint's
query string (an API key may travel there). They go only over TLS (``wss://``,
a secure gRPC channel), except plain ``ws://`` to this machine, and never
follow a redirect to another origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ._apply import AppliedCredentials, UnsupportedStrategy, apply_credentials
from ._client import AsyncNexusClient
from ._errors import NexusAuthError, NexusInvalidRequestError, NexusNotFoundError
from ._extras import requires_extra
from ._models import TokenPayload
from ._options import is_loopback_host

with requires_extra("bridge"):
    import grpc
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
    from websockets.uri import WebSocketURI, parse_uri

__all__ = [
    "Bridge",
    "BridgeError",
    "BridgeMetrics",
    "BridgeOptions",
    "RetryPolicy",
    "Send",
    "WebSocketHandler",
]

log = logging.getLogger("nexus_sdk.bridge")

T = TypeVar("T")
Send = Callable[[str | bytes], Awaitable[None]]

# Close codes that say the exchange itself was wrong: reconnecting repeats it.
_PERMANENT_CLOSE_CODES = {1002, 1003, 1007, 1009, 1010}


class BridgeError(Exception):
    """Retrying cannot help; ``__cause__`` holds what happened."""


class WebSocketHandler(Protocol):
    async def on_connect(self, send: Send) -> None:
        """A socket is open: the first one, a reconnection or a rotation's new
        one. Subscribe here; ``send`` always writes to the current socket, and
        raises ``ConnectionError`` while the link is down."""

    async def on_message(self, message: str | bytes) -> None: ...

    async def on_disconnect(self, error: BaseException | None) -> None:
        """The link dropped (``None`` for a clean close); the Bridge reconnects."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``min_backoff`` doubling per failure up to
    ``max_backoff``, plus up to ``jitter`` seconds so agents do not retry in step."""

    min_backoff: float = 1.0
    max_backoff: float = 30.0
    jitter: float = 1.0

    def delay(self, failures: int) -> float:
        # The exponent is capped: a day-long outage must not overflow a float.
        base = min(self.max_backoff, self.min_backoff * 2.0 ** min(max(0, failures - 1), 60))
        return base + random.uniform(0, self.jitter)  # noqa: S311 - spreading retries, not secrecy


@dataclass(frozen=True)
class BridgeOptions:
    # Renew this long before the credentials expire (at most half their lifetime).
    refresh_buffer: float = 300.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    open_timeout: float = 10.0
    # WebSocket keepalive: a link whose pong is this late is treated as dropped.
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    max_message_bytes: int = 1024 * 1024


class BridgeMetrics:
    """Prometheus metrics of the Bridge. ``agent_labels`` are set on every
    series, beside ``connection_id``, so one scrape tells agents apart."""

    def __init__(
        self, agent_labels: Mapping[str, str], registry: CollectorRegistry = REGISTRY
    ) -> None:
        names = (*sorted(agent_labels), "connection_id")
        self._families = _families(registry, names)
        self._labels = dict(agent_labels)

    def _child(self, name: str, connection_id: str) -> Any:
        return self._families[name].labels(**self._labels, connection_id=connection_id)

    def watch(self, connection_id: str) -> None:
        """Make every series of a link exist, at zero, before anything happens to it."""
        for name in self._families:
            self._child(name, connection_id)

    def connected(self, connection_id: str) -> None:
        self._child("connections", connection_id).inc()
        self._child("status", connection_id).set(1)

    def disconnected(self, connection_id: str) -> None:
        self._child("disconnects", connection_id).inc()
        self._child("status", connection_id).set(0)

    def renewed(self, connection_id: str) -> None:
        self._child("refreshes", connection_id).inc()

    def stopped(self, connection_id: str) -> None:
        self._child("status", connection_id).set(0)


@functools.cache
def _families(registry: CollectorRegistry, names: tuple[str, ...]) -> dict[str, Any]:
    """One set of metric families per registry, however many Bridges use it."""
    try:
        return {
            "connections": Counter(
                "nexus_bridge_connections_total",
                "Links the Bridge opened (first, reconnections and rotations).",
                names,
                registry=registry,
            ),
            "disconnects": Counter(
                "nexus_bridge_disconnects_total",
                "Links that dropped (not counting a rotation's planned close).",
                names,
                registry=registry,
            ),
            "refreshes": Counter(
                "nexus_bridge_token_refreshes_total",
                "Links re-authenticated with fresh credentials before the old expired.",
                names,
                registry=registry,
            ),
            "status": Gauge(
                "nexus_bridge_connection_status",
                "1 while the link is up, else 0.",
                names,
                registry=registry,
            ),
        }
    except ValueError as exc:
        raise ValueError(
            "Bridge metrics already exist in this registry with other agent labels; "
            "use the same label names for every Bridge, or another registry"
        ) from exc


class _NoMetrics(BridgeMetrics):
    def __init__(self) -> None:
        pass

    def watch(self, connection_id: str) -> None:
        pass

    def connected(self, connection_id: str) -> None:
        pass

    def disconnected(self, connection_id: str) -> None:
        pass

    def renewed(self, connection_id: str) -> None:
        pass

    def stopped(self, connection_id: str) -> None:
        pass


@dataclass
class _Held:
    """Credentials in use, and when they were fetched."""

    token: TokenPayload
    fetched_at: float = field(default_factory=time.time)

    def renew_at(self, buffer: float) -> float | None:
        expires = self.token.expires_at
        if expires is None:
            return None
        # Never renew sooner than half-way, however short-lived the credentials.
        return expires - min(buffer, (expires - self.fetched_at) / 2)


class _Refused(Exception):
    """The endpoint refused the credentials (HTTP 401 or 403)."""


class _CrossOriginRedirect(Exception):
    """The endpoint redirected the handshake to another origin."""


class _SameOriginConnect(connect):
    """websockets' ``connect``, following a redirect only within the origin.

    On another origin websockets drops only ``Authorization``, ``Cookie`` and
    ``Proxy-Authorization``; a connection's credentials may be any header
    (``X-Api-Key``), which would go to whoever the endpoint names.
    """

    def process_redirect(self, exc: Exception) -> Exception | str:
        current = self.ws_uri
        target = super().process_redirect(exc)
        if isinstance(target, str) and _origin(parse_uri(target)) != _origin(current):
            return _CrossOriginRedirect()
        return target


def _origin(uri: WebSocketURI) -> tuple[bool, str, int]:
    return uri.secure, uri.host, uri.port


class Bridge:
    def __init__(
        self,
        client: AsyncNexusClient,
        *,
        metrics: BridgeMetrics | None = None,
        options: BridgeOptions | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics if metrics is not None else _NoMetrics()
        self.options = options if options is not None else BridgeOptions()

    @classmethod
    def standard(
        cls,
        client: AsyncNexusClient,
        agent_labels: Mapping[str, str],
        *,
        registry: CollectorRegistry = REGISTRY,
        options: BridgeOptions | None = None,
    ) -> Bridge:
        """A Bridge whose metrics go to ``registry`` (Prometheus' default), labelled."""
        return cls(client, metrics=BridgeMetrics(agent_labels, registry), options=options)

    async def maintain_websocket(
        self, connection_id: str, url: str, handler: WebSocketHandler
    ) -> None:
        """Keep a WebSocket to ``url`` open with ``connection_id``'s credentials,
        until cancelled; see the module's documentation."""
        parts = urlsplit(url)
        if parts.scheme.lower() == "ws" and not is_loopback_host(parts.hostname or ""):
            raise BridgeError(
                f"{_redacted(url)}: credentials go only over wss:// "
                "(plain ws:// only to localhost, 127.0.0.0/8 or ::1)"
            )
        link = _WebSocketLink(self, connection_id, url, handler)
        self._metrics.watch(connection_id)
        try:
            await link.run()
        finally:
            self._metrics.stopped(connection_id)

    async def maintain_grpc(
        self,
        connection_id: str,
        target: str,
        run: Callable[[grpc.aio.Channel], Awaitable[T]],
        *,
        channel_credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> T:
        """Run ``run(channel)`` with every call carrying the connection's current
        credentials, and return what it returns. If it raises (the link broke),
        open a new channel after a backoff and run it again.

        Credentials go only over a secure channel: TLS by default, or the
        ``channel_credentials`` given (``grpc.local_channel_credentials()`` on
        loopback)."""
        secure = channel_credentials or grpc.ssl_channel_credentials()
        self._metrics.watch(connection_id)
        stale: TokenPayload | None = None
        failures = 0
        while True:
            try:
                held = _Held(await self._credentials(connection_id, stale))
                _metadata(held.token)  # refuse a strategy gRPC cannot carry before dialling
            except BridgeError:
                raise
            except Exception as exc:
                failures += 1
                await self._pause(connection_id, _failed("fetching credentials", exc), failures)
                continue
            plugin = grpc.metadata_call_credentials(_MetadataPlugin(held))
            channel = grpc.aio.secure_channel(
                target,
                grpc.composite_channel_credentials(secure, plugin),
                options=list(channel_options),
            )
            renewing = asyncio.create_task(self._keep_fresh(connection_id, held))
            self._metrics.connected(connection_id)
            try:
                return await run(channel)
            except BridgeError:
                raise
            except Exception as exc:
                broke = exc
            finally:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
                await channel.close()
                self._metrics.stopped(connection_id)
            self._metrics.disconnected(connection_id)
            # Refused credentials are replaced, not sent again.
            unauthenticated = (
                isinstance(broke, grpc.aio.AioRpcError)
                and broke.code() == grpc.StatusCode.UNAUTHENTICATED
            )
            stale = held.token if unauthenticated else None
            failures += 1
            await self._pause(connection_id, _failed(f"running over {target}", broke), failures)

    async def _credentials(self, connection_id: str, stale: TokenPayload | None) -> TokenPayload:
        """The connection's credentials; with ``stale``, ones other than those."""
        try:
            token = await self._client.get_token_by_connection_id(connection_id)
            if stale is not None and token.credentials == stale.credentials:
                token = await self._client.refresh_connection(connection_id)
        except (NexusAuthError, NexusNotFoundError, NexusInvalidRequestError) as exc:
            raise BridgeError(f"Nexus gave no credentials for {connection_id}: {exc}") from exc
        return token

    async def _keep_fresh(self, connection_id: str, held: _Held) -> None:
        """Swap fresh credentials into ``held`` before they expire, until cancelled."""
        while (renew_at := held.renew_at(self.options.refresh_buffer)) is not None:
            await asyncio.sleep(max(0.0, renew_at - time.time()))
            fresh = await self._renewed(connection_id, held, _check_grpc_metadata)
            if fresh is None:
                return
            held.token, held.fetched_at = fresh[0], time.time()
            self._metrics.renewed(connection_id)

    async def _renewed(
        self,
        connection_id: str,
        held: _Held,
        establish: Callable[[TokenPayload], Awaitable[T]],
    ) -> tuple[TokenPayload, T] | None:
        """Fresh credentials and what ``establish`` made with them, retried until
        the held ones expire; ``None`` if that cannot be done in time."""
        failures = 0
        while True:
            try:
                token = await self._credentials(connection_id, held.token)
                return token, await establish(token)
            except BridgeError as exc:
                log.error("cannot renew the link of %s: %s", connection_id, exc)
                return None
            except Exception as exc:
                failures += 1
                left = (held.token.expires_at or 0) - time.time()
                if left <= 0:
                    log.warning(
                        "credentials of %s expired before they could be renewed", connection_id
                    )
                    return None
                await self._pause(connection_id, _failed("renewing", exc), failures, at_most=left)

    async def _pause(
        self, connection_id: str, what: str, failures: int, at_most: float | None = None
    ) -> None:
        delay = self.options.retry.delay(failures)
        if at_most is not None:
            delay = min(delay, at_most)
        log.warning("%s for %s; retrying in %.1f s", what, connection_id, delay)
        await asyncio.sleep(delay)

    async def _open_websocket(self, url: str, token: TokenPayload) -> ClientConnection:
        applied = _applied(token)
        if applied.body:
            raise BridgeError("these credentials go in a request body, which a WebSocket lacks")
        try:
            return await _SameOriginConnect(
                _with_query(url, applied.query),
                additional_headers=applied.headers,
                open_timeout=self.options.open_timeout,
                ping_interval=self.options.ping_interval,
                ping_timeout=self.options.ping_timeout,
                max_size=self.options.max_message_bytes,
            )
        except InvalidURI as exc:
            raise BridgeError(f"not a WebSocket URL: {_redacted(url)}") from exc
        except _CrossOriginRedirect as exc:
            raise BridgeError(
                f"{_redacted(url)} redirected the WebSocket to another origin, where its "
                "credentials are not sent; use the URL it redirects to"
            ) from exc
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise _Refused(status) from exc
            if 400 <= status < 500 and status not in (408, 429):
                raise BridgeError(f"{_redacted(url)} refused the WebSocket: HTTP {status}") from exc
            raise


class _WebSocketLink:
    def __init__(
        self, bridge: Bridge, connection_id: str, url: str, handler: WebSocketHandler
    ) -> None:
        self._bridge = bridge
        self._connection_id = connection_id
        self._url = url
        self._handler = handler
        self._socket: ClientConnection | None = None

    async def send(self, message: str | bytes) -> None:
        if self._socket is None:
            raise ConnectionError("the link is down; the Bridge is reconnecting")
        try:
            await self._socket.send(message)
        except ConnectionClosed as exc:
            raise ConnectionError("the link closed; the Bridge is reconnecting") from exc

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                token, socket = await self._connect(None)
            except BridgeError:
                raise
            except Exception as exc:
                failures += 1
                await self._bridge._pause(self._connection_id, _failed("connecting", exc), failures)
                continue
            opened = time.monotonic()
            code, error = await self._serve(_Held(token), socket)
            self._bridge._metrics.disconnected(self._connection_id)
            await self._handler.on_disconnect(error)
            if code in _PERMANENT_CLOSE_CODES:
                raise BridgeError(
                    f"{_redacted(self._url)} closed the WebSocket with code {code}"
                ) from error
            # A link that drops soon after opening backs off like a failure to
            # connect, so an endpoint closing every link at once is not hammered.
            lasted = time.monotonic() - opened
            failures = 1 if lasted >= self._bridge.options.retry.max_backoff else failures + 1
            what = f"the link closed (code {code})" if error is None else _failed("the link", error)
            await self._bridge._pause(self._connection_id, what, failures)

    async def _connect(self, stale: TokenPayload | None) -> tuple[TokenPayload, ClientConnection]:
        """Credentials and a socket opened with them. An endpoint refusing them
        gets one more try with credentials fetched afresh."""
        bridge = self._bridge
        token = await bridge._credentials(self._connection_id, stale)
        try:
            return token, await bridge._open_websocket(self._url, token)
        except _Refused:
            token = await bridge._credentials(self._connection_id, token)
        try:
            return token, await bridge._open_websocket(self._url, token)
        except _Refused as exc:
            raise BridgeError(
                f"{_redacted(self._url)} refused fresh credentials of {self._connection_id} "
                f"(HTTP {exc.args[0]})"
            ) from exc

    async def _serve(
        self, held: _Held, socket: ClientConnection
    ) -> tuple[int | None, BaseException | None]:
        """Run the link until its socket ends, renewing it before the
        credentials expire; returns the close code and error of the last socket."""
        bridge = self._bridge
        retiring: set[asyncio.Task[Any]] = set()
        reading = asyncio.create_task(self._read(socket))
        renewing: asyncio.Task[Any] | None = None
        try:
            await self._up(socket)
            while True:
                if renewing is None and held.renew_at(bridge.options.refresh_buffer) is not None:
                    renewing = asyncio.create_task(self._renew(held))
                pending = {task for task in (reading, renewing) if task is not None}
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if reading.done():
                    return reading.result()
                assert renewing is not None
                fresh = renewing.result()
                renewing = None
                if fresh is None:  # cannot renew: keep this socket while it lasts
                    return await reading
                old, old_reading = socket, reading
                socket = fresh[1]
                held.token, held.fetched_at = fresh[0], time.time()
                reading = asyncio.create_task(self._read(socket))
                bridge._metrics.renewed(self._connection_id)
                await self._up(socket)
                retiring.add(asyncio.create_task(_retire(old, old_reading)))
        finally:
            for task in (reading, renewing, *retiring):
                if task is not None and not task.done():
                    task.cancel()
            await asyncio.gather(
                *(t for t in (reading, renewing, *retiring) if t is not None),
                return_exceptions=True,
            )
            self._socket = None
            await socket.close()

    async def _renew(self, held: _Held) -> tuple[TokenPayload, ClientConnection] | None:
        renew_at = held.renew_at(self._bridge.options.refresh_buffer)
        await asyncio.sleep(max(0.0, (renew_at or 0) - time.time()))
        fresh = await self._bridge._renewed(
            self._connection_id, held, lambda token: self._bridge._open_websocket(self._url, token)
        )
        return fresh

    async def _up(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._bridge._metrics.connected(self._connection_id)
        log.info("link for %s is up (%s)", self._connection_id, _redacted(self._url))
        try:
            await self._handler.on_connect(self.send)
        except ConnectionError:
            # The socket closed under the handler; its reader ends the link.
            log.info("link for %s closed while the handler set it up", self._connection_id)

    async def _read(self, socket: ClientConnection) -> tuple[int | None, BaseException | None]:
        try:
            async for message in socket:
                await self._handler.on_message(message)
        except ConnectionClosed as exc:
            return socket.close_code, exc
        return socket.close_code, None


async def _retire(socket: ClientConnection, reading: asyncio.Task[Any]) -> None:
    """Close a socket a rotation replaced, once the handler has the new one."""
    await socket.close(1000, "re-authenticated")
    with contextlib.suppress(Exception):
        await reading


async def _check_grpc_metadata(token: TokenPayload) -> None:
    _metadata(token)


class _MetadataPlugin(grpc.AuthMetadataPlugin):  # type: ignore[misc]
    """Adds the currently held credentials to each gRPC call."""

    def __init__(self, held: _Held) -> None:
        self._held = held

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        callback(_metadata(self._held.token), None)


def _failed(doing: str, error: BaseException) -> str:
    # The type only: some exceptions' text quotes a URL, whose query may hold a key.
    return f"{doing} failed ({type(error).__name__})"


def _applied(token: TokenPayload) -> AppliedCredentials:
    try:
        return apply_credentials(token)
    except UnsupportedStrategy as exc:
        raise BridgeError(str(exc)) from exc


def _metadata(token: TokenPayload) -> tuple[tuple[str, str], ...]:
    applied = _applied(token)
    if applied.query or applied.body:
        raise BridgeError("these credentials go in a query or body, which gRPC calls lack")
    # gRPC metadata keys are lower case.
    return tuple((name.lower(), value) for name, value in applied.headers.items())


def _with_query(url: str, extra: Mapping[str, str]) -> str:
    if not extra:
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(extra.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _redacted(url: str) -> str:
    """The URL without its query string or user information, fit for a log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
