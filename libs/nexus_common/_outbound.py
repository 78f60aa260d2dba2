"""The outbound HTTP policy: every call Nexus makes to a URL that someone configured.

Provider endpoints, discovery documents and ``BACKEND_AUTH_URL`` name hosts that
Nexus then sends client secrets, refresh tokens and user tokens to. Aimed
inward (cloud metadata at 169.254.169.254, a database on the private network,
Envoy's admin port on loopback), they would make Nexus an attacker's proxy
(SSRF). A client from ``outbound_client`` therefore:

- resolves the host once, checks *every* address it resolves to, and connects
  only to a checked address. The check lives in the httpcore network backend,
  so TLS still sends SNI for, and verifies the certificate of, the host name,
  and a name that resolves to a public address when registered and to
  127.0.0.1 later (DNS rebinding) is refused when it is called;
- refuses every address that is not global: loopback, link-local (and cloud
  metadata), private (RFC 1918), carrier-grade NAT (RFC 6598), unique local
  (RFC 4193), multicast, unspecified and reserved, also when written as
  IPv4-mapped, 6to4 or NAT64 IPv6. Addresses inside ``allowed_networks``
  (``NEXUS_OUTBOUND_ALLOWED_NETWORKS``) are the exception, except on the ports
  in ``denied_ports`` (``NEXUS_OUTBOUND_DENIED_PORTS``): the deployment's own
  listeners, such as Envoy's admin port, stay out of reach even then;
- sends plain http only to allowed networks: a secret that crosses a network
  the deployment does not own must be encrypted;
- never follows a redirect (a 3xx is an error), asks for no compression, stops
  reading a body past ``max_body_bytes``, and gives up a whole call (connect,
  request and body) after ``deadline_seconds``.

Environment proxies (``HTTPS_PROXY``) are not used: a proxy would connect to
addresses this policy never saw.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import select
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from ._settings import ConfigError

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "AddressRefused",
    "BodyTooLarge",
    "DeadlineExceeded",
    "OutboundPolicy",
    "OutboundRefused",
    "RedirectRefused",
    "Resolver",
    "address_class",
    "outbound_client",
    "parse_json",
    "read_capped",
    "system_resolver",
]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses the name stands for, as strings.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_ULA = ipaddress.IPv6Network("fc00::/7")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# The instance metadata services of AWS, GCP, Azure (IPv4), AWS (IPv6) and Alibaba.
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_CLASSES: tuple[tuple[str, Callable[[IPAddress], bool]], ...] = (
    ("cloud metadata", lambda a: a in _METADATA),
    ("unspecified", lambda a: a.is_unspecified),
    ("loopback", lambda a: a.is_loopback),
    ("link-local", lambda a: a.is_link_local),
    ("multicast", lambda a: a.is_multicast),
    ("reserved", lambda a: a.is_reserved),
    ("carrier-grade NAT", lambda a: a.version == 4 and a in _CGNAT),
    ("unique local", lambda a: a.version == 6 and a in _ULA),
    ("private", lambda a: a.is_private),
    ("reserved", lambda a: not a.is_global),
)
_PLAIN_HTTP: ContextVar[bool] = ContextVar("nexus_outbound_plain_http", default=False)


class OutboundRefused(httpx.TransportError):
    """The policy stopped a call; the message says why, and never quotes the response."""


class AddressRefused(OutboundRefused):
    """The host is, or resolves to, an address outbound calls may not reach."""


class RedirectRefused(OutboundRefused):
    """The server answered with a redirect, which is never followed."""


class BodyTooLarge(OutboundRefused):
    """The response body is longer than the cap."""


class DeadlineExceeded(httpx.TimeoutException):
    """The whole call took longer than the policy's deadline."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_class(address: IPAddress) -> str | None:
    """Why ``address`` is not public (e.g. ``"loopback"``), or None for a global address.

    An IPv6 address that embeds an IPv4 one (IPv4-mapped, 6to4, NAT64) is
    judged by the IPv4 address it reaches."""
    if address.version == 6:
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return address_class(embedded)
    for name, applies in _CLASSES:
        if applies(address):
            return name
    return None


async def system_resolver(host: str, port: int) -> Sequence[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _networks(text: str) -> tuple[IPNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(n.strip()) for n in text.split(",") if n.strip())
    except ValueError as exc:
        raise ConfigError(
            "NEXUS_OUTBOUND_ALLOWED_NETWORKS must be comma-separated CIDRs, "
            "like 127.0.0.0/8,::1/128"
        ) from exc


def _ports(text: str) -> frozenset[int]:
    entries = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() and 0 < int(p) < 65536 for p in entries):
        raise ConfigError("NEXUS_OUTBOUND_DENIED_PORTS must be comma-separated port numbers")
    return frozenset(int(p) for p in entries)


@dataclass(frozen=True)
class OutboundPolicy:
    """Where outbound calls may go, and how much of an answer they read."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    denied_ports: frozenset[int] = frozenset()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    deadline_seconds: float = 10.0
    resolver: Resolver = field(default=system_resolver, repr=False, compare=False)

    @classmethod
    def parse(
        cls,
        *,
        allowed_networks: str,
        denied_ports: str,
        max_body_bytes: int,
        deadline_seconds: float,
    ) -> OutboundPolicy:
        """The policy from its settings' text; ``ConfigError`` names a malformed one."""
        if max_body_bytes < 1024:
            raise ConfigError("NEXUS_OUTBOUND_MAX_BODY_BYTES must be at least 1024")
        return cls(
            _networks(allowed_networks), _ports(denied_ports), max_body_bytes, deadline_seconds
        )

    def _allows(self, address: IPAddress) -> bool:
        candidates: list[IPAddress] = [address]
        if address.version == 6:
            embedded = _embedded_ipv4(address)
            candidates += [embedded] if embedded is not None else []
        return any(a in net for a in candidates for net in self.allowed_networks)

    def refusal(self, host: str, address: IPAddress, port: int, *, plain_http: bool) -> str | None:
        """Why a call to ``address`` (which ``host`` resolved to) is refused, or None."""
        where = str(address) if host.strip("[]") == str(address) else f"{host} ({address})"
        kind = address_class(address)
        allowed = self._allows(address)
        if kind is not None and not allowed:
            return (
                f"{where} is not a public address ({kind}); outbound calls may not reach it "
                "unless NEXUS_OUTBOUND_ALLOWED_NETWORKS allows its network"
            )
        if allowed and port in self.denied_ports:
            return f"{where} port {port} is one of this deployment's own listeners"
        if plain_http and not allowed:
            return (
                f"{where} may be called over https only (plain http reaches only allowed networks)"
            )
        return None

    async def checked_addresses(self, host: str, port: int, *, plain_http: bool) -> list[str]:
        """Every address ``host`` resolves to, once each is allowed; else ``AddressRefused``."""
        try:
            resolved = await self.resolver(host.strip("[]"), port)
        except OSError as exc:
            raise httpcore.ConnectError(f"{host} could not be resolved") from exc
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolved]
        if not addresses:
            raise httpcore.ConnectError(f"{host} could not be resolved")
        for address in addresses:
            problem = self.refusal(host, address, port, plain_http=plain_http)
            if problem is not None:
                raise AddressRefused(problem)
        return [str(a) for a in dict.fromkeys(addresses)]

    async def url_refusal(self, url: str) -> str | None:
        """Why a call to ``url`` would be refused, judged now; None when allowed.

        A name that does not resolve now is let through: it is checked again,
        like every name, when it is called."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        plain_http = parts.scheme == "http"
        port = parts.port or (80 if plain_http else 443)
        try:
            async with asyncio.timeout(self.deadline_seconds):
                await self.checked_addresses(host, port, plain_http=plain_http)
        except AddressRefused as exc:
            return str(exc)
        except (httpcore.ConnectError, TimeoutError):
            # Plain http must be shown to stay inside the allowed networks.
            return f"{host} does not resolve now, so plain http is refused" if plain_http else None
        return None


class _Stream(httpcore.AsyncNetworkStream):
    """A connection's stream that answers "is_readable" from its socket, kept
    at hand. The connection pool asks that of every idle connection each time
    it places a request; anyio would build all of the socket's attributes
    (peer address lookups included) to hand out the socket each time."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._socket is not None:
            return _socket_readable(self._socket)
        return self._inner.get_extra_info(info)


def _socket_readable(sock: socket.socket) -> bool:
    """Whether reading would not block: for an idle keep-alive connection, that
    the server closed it (or sent what it should not have)."""
    poll = select.poll()
    poll.register(sock.fileno(), select.POLLIN)
    return bool(poll.poll(0))


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses the policy checked, resolving each name once."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._policy.checked_addresses(host, port, plain_http=_PLAIN_HTTP.get())
        failure: Exception | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
                return _Stream(stream)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # checked_addresses never returns an empty list
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("outbound calls never use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _CappedStream(httpx.AsyncByteStream):
    def __init__(
        self, inner: httpx.AsyncByteStream, cap: int, deadline: float, request: httpx.Request
    ) -> None:
        self._inner = inner
        self._cap = cap
        self._deadline = deadline
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        received = 0
        chunks = aiter(self._inner)
        while True:
            try:
                async with asyncio.timeout_at(self._deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise DeadlineExceeded(
                    f"{self._request.url.host} did not finish its answer in time",
                    request=self._request,
                ) from exc
            received += len(chunk)
            if received > self._cap:
                raise BodyTooLarge(
                    f"{self._request.url.host} answered more than {self._cap} bytes",
                    request=self._request,
                )
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _PolicyTransport(httpx.AsyncHTTPTransport):
    def __init__(self, policy: OutboundPolicy) -> None:
        super().__init__(trust_env=False)
        # httpx 0.28 takes no network backend (encode/httpx#3749): the pool it built is
        # replaced by the same default pool over the checked backend.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=100,
            # As many as may be open: fewer would close connections still in
            # use by a busy refresh loop and open new ones for the next calls.
            max_keepalive_connections=100,
            keepalive_expiry=5.0,
            network_backend=_CheckedBackend(policy),
        )
        self._policy = policy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        deadline = asyncio.get_running_loop().time() + self._policy.deadline_seconds
        # The scheme is not passed down to connect_tcp, which runs in this task.
        plain_http = _PLAIN_HTTP.set(request.url.scheme == "http")
        try:
            async with asyncio.timeout_at(deadline):
                response = await super().handle_async_request(request)
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"{request.url.host} did not answer in time", request=request
            ) from exc
        finally:
            _PLAIN_HTTP.reset(plain_http)
        if 300 <= response.status_code < 400:
            await response.aclose()
            raise RedirectRefused(
                f"{request.url.host} answered HTTP {response.status_code}, a redirect; "
                "outbound calls never follow redirects",
                request=request,
            )
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_CappedStream(response.stream, self._policy.max_body_bytes, deadline, request),
            extensions=response.extensions,
        )


def outbound_client(policy: OutboundPolicy, timeout: httpx.Timeout) -> httpx.AsyncClient:
    """The one kind of HTTP client the services call out with."""
    return httpx.AsyncClient(
        transport=_PolicyTransport(policy),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        # A compressed body could expand far past the cap once decoded.
        headers={"Accept-Encoding": "identity"},
    )


async def read_capped(response: httpx.Response, cap: int) -> bytes:
    """A streamed response's body, or ``BodyTooLarge`` once it passes ``cap`` bytes."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > cap:
            raise BodyTooLarge(f"the answer is longer than {cap} bytes", request=response.request)
    return bytes(body)


def _not_json(constant: str) -> object:
    raise ValueError(f"{constant} is not JSON (RFC 8259 §6)")


def parse_json(body: bytes | bytearray | str) -> object:
    """A third party's JSON, read strictly: ValueError for what is not RFC 8259
    JSON (NaN, Infinity) and for nesting too deep for Python's parser."""
    try:
        return json.loads(body, parse_constant=_not_json)
    except RecursionError as exc:
        raise ValueError("the JSON nests too deep") from exc
