"""The Bridge through the real stack: an agent's long-lived WebSocket and gRPC
links to a provider's API stay authenticated while the connection's tokens
rotate. The provider is the real OAuth server from npm, issuing short-lived
tokens; its API is a real WebSocket server and a real gRPC server on loopback,
each checking every bearer token at the provider's userinfo endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from nexus_sdk import AsyncNexusClient, NexusClientOptions, NexusNotFoundError
from nexus_sdk.bridge import Bridge, BridgeError, BridgeOptions, RetryPolicy, Send
from prometheus_client import CollectorRegistry
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from tests.e2e.test_rest_sessions import connect, ok
from tests.e2e.test_typescript_sdk import captured_connection
from tests.support.app_server import GOOD_API_KEY, AppServer
from tests.support.oidc_server import OidcServer, behave, start_oidc_server
from tests.support.redirects import Elsewhere, Redirector
from tools.devstack import Stack

# Provider tokens live 6 s; the Bridge renews 2 s before expiry.
TOKEN_SECONDS = 6
OPTIONS = BridgeOptions(
    refresh_buffer=2.0, retry=RetryPolicy(min_backoff=0.1, max_backoff=0.5, jitter=0.1)
)


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcServer]:
    with start_oidc_server() as server:
        behave(server, expires_in=TOKEN_SECONDS)
        yield server


@dataclass(frozen=True)
class Setup:
    agent_key: str
    connection_id: str


@pytest.fixture(scope="module")
def setup(stack: Stack, idp: OidcServer) -> Setup:
    admin = {"X-API-Key": stack.admin_key}
    with httpx.Client(base_url=stack.rest_url, headers=admin, timeout=30) as rest:
        provider = ok(
            rest.post(
                "/v1/providers",
                json={
                    "name": "market-data",
                    "auth_type": "oauth2",
                    "client_id": "MD_CLIENT_ID",
                    "client_secret": "MD_CLIENT_SECRET",
                    "auth_url": f"{idp.issuer}/authorize",
                    "token_url": f"{idp.issuer}/token",
                    "scopes": ["stream:read"],
                    "params": {"skip_scope_on_exchange": True},
                },
            )
        )
        agent = ok(
            rest.post(
                "/admin/v1/agents",
                json={"agent_id": "stream-agent", "allowed_scopes": ["stream:read"]},
            )
        )
        connection_id = connect(rest, admin, provider["id"], ["stream:read"])
    return Setup(agent["agent_key"], connection_id)


@pytest.fixture
async def client(stack: Stack, setup: Setup) -> AsyncIterator[AsyncNexusClient]:
    options = NexusClientOptions(gateway_url=stack.rest_url, agent_key=setup.agent_key)
    async with AsyncNexusClient(options) as nexus:
        yield nexus


async def token_is_valid(idp: OidcServer, authorization: str | None) -> bool:
    if not authorization or not authorization.startswith("Bearer "):
        return False
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(f"{idp.issuer}/userinfo", headers={"Authorization": authorization})
    return answer.status_code == 200


@dataclass
class StreamServer:
    """A provider's streaming API: checks the bearer token at the handshake,
    then sends a tick every 50 ms and answers each message."""

    idp: OidcServer
    refuse_all: bool = False
    close_at_once: bool = False
    url: str = ""
    opened: list[str] = field(default_factory=list)  # the token of each socket, in order
    opened_at: list[float] = field(default_factory=list)
    open_now: int = 0
    most_open: int = 0
    sockets: list[ServerConnection] = field(default_factory=list)

    async def check(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.refuse_all or not await token_is_valid(
            self.idp, request.headers.get("Authorization")
        ):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid token\n")
        return None

    async def handle(self, connection: ServerConnection) -> None:
        self.opened.append(connection.request.headers["Authorization"])
        self.opened_at.append(time.monotonic())
        if self.close_at_once:
            await connection.close(1011, "overloaded")
            return
        self.sockets.append(connection)
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        ticks = asyncio.create_task(self._tick(connection))
        try:
            async for message in connection:
                await connection.send(f"ack:{message}")
        finally:
            ticks.cancel()
            self.open_now -= 1

    async def _tick(self, connection: ServerConnection) -> None:
        n = 0
        with contextlib.suppress(Exception):
            while True:
                n += 1
                await connection.send(f"tick:{n}")
                await asyncio.sleep(0.05)


@pytest.fixture
async def stream(idp: OidcServer) -> AsyncIterator[StreamServer]:
    server = StreamServer(idp)
    async with serve(server.handle, "127.0.0.1", 0, process_request=server.check) as running:
        port = next(iter(running.sockets)).getsockname()[1]
        server.url = f"ws://127.0.0.1:{port}/stream?channel=btc_usd"
        yield server


@dataclass
class Recorder:
    """A handler that subscribes on every connect and records what it sees."""

    connects: int = 0
    messages: list[str | bytes] = field(default_factory=list)
    disconnects: list[BaseException | None] = field(default_factory=list)

    async def on_connect(self, send: Send) -> None:
        self.connects += 1
        await send(f"subscribe-{self.connects}")

    async def on_message(self, message: str | bytes) -> None:
        self.messages.append(message)

    async def on_disconnect(self, error: BaseException | None) -> None:
        self.disconnects.append(error)


async def until(condition: Callable[[], bool], within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(work: Awaitable[Any]) -> AsyncIterator[asyncio.Task[Any]]:
    task = asyncio.ensure_future(work)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def metered(client: AsyncNexusClient) -> tuple[CollectorRegistry, Bridge]:
    """A Bridge with standard metrics, in a registry of the test's own."""
    registry = CollectorRegistry()
    labels = {"agent_id": "stream-agent"}
    return registry, Bridge.standard(client, labels, registry=registry, options=OPTIONS)


def sample(registry: CollectorRegistry, name: str, connection_id: str) -> float | None:
    labels = {"agent_id": "stream-agent", "connection_id": connection_id}
    return registry.get_sample_value(name, labels)


async def test_the_link_is_reauthenticated_before_the_token_expires_without_a_gap(
    client: AsyncNexusClient, setup: Setup, stream: StreamServer
) -> None:
    registry, bridge = metered(client)
    handler = Recorder()

    async with running(bridge.maintain_websocket(setup.connection_id, stream.url, handler)):
        # Two rotations: each renewal opens a socket with a new token first.
        await until(lambda: len(stream.opened) >= 3)
        await until(lambda: stream.open_now == 1)
        assert len(set(stream.opened)) == len(stream.opened), "each socket had a new token"
        assert stream.most_open == 2, "the new socket opened before the old one closed"
        assert handler.disconnects == [], "a rotation is not a disconnect"
        assert handler.connects == len(stream.opened)
        acks = [m for m in handler.messages if isinstance(m, str) and m.startswith("ack:")]
        assert acks[:3] == ["ack:subscribe-1", "ack:subscribe-2", "ack:subscribe-3"]
        refreshes = sample(registry, "nexus_bridge_token_refreshes_total", setup.connection_id)
        assert refreshes is not None and refreshes >= 2
        assert sample(registry, "nexus_bridge_connection_status", setup.connection_id) == 1
        assert sample(registry, "nexus_bridge_disconnects_total", setup.connection_id) == 0
    assert sample(registry, "nexus_bridge_connection_status", setup.connection_id) == 0


async def test_a_dropped_link_is_reopened_and_the_handler_told(
    client: AsyncNexusClient, setup: Setup, stream: StreamServer
) -> None:
    registry, bridge = metered(client)
    handler = Recorder()

    async with running(bridge.maintain_websocket(setup.connection_id, stream.url, handler)):
        await until(lambda: len(stream.sockets) == 1)
        await stream.sockets[0].close(1011, "server restarting")
        await until(lambda: len(handler.disconnects) == 1 and handler.connects == 2)
        assert sample(registry, "nexus_bridge_disconnects_total", setup.connection_id) == 1
        assert sample(registry, "nexus_bridge_connections_total", setup.connection_id) == 2


async def test_links_that_drop_at_once_are_retried_with_growing_backoff(
    client: AsyncNexusClient, setup: Setup, stream: StreamServer
) -> None:
    stream.close_at_once = True
    policy = RetryPolicy(min_backoff=0.1, max_backoff=0.8, jitter=0)
    bridge = Bridge(client, options=BridgeOptions(retry=policy))

    async with running(bridge.maintain_websocket(setup.connection_id, stream.url, Recorder())):
        await until(lambda: len(stream.opened_at) >= 5)
    gaps = [later - earlier for earlier, later in itertools.pairwise(stream.opened_at)]
    # Each wait is at least the policy's delay for one more failure in a row.
    for gap, delay in zip(gaps, (0.1, 0.2, 0.4, 0.8), strict=False):
        assert gap >= delay


async def test_an_endpoint_that_refuses_fresh_credentials_ends_the_bridge(
    client: AsyncNexusClient, setup: Setup, stream: StreamServer
) -> None:
    stream.refuse_all = True
    bridge = Bridge(client, options=OPTIONS)

    with pytest.raises(BridgeError, match="refused fresh credentials") as refused:
        await asyncio.wait_for(
            bridge.maintain_websocket(setup.connection_id, stream.url, Recorder()), 30
        )
    assert "channel=" not in str(refused.value), "the query string may hold a key"


async def test_an_unknown_connection_ends_the_bridge(
    client: AsyncNexusClient, stream: StreamServer
) -> None:
    bridge = Bridge(client, options=OPTIONS)

    with pytest.raises(BridgeError) as failed:
        await asyncio.wait_for(
            bridge.maintain_websocket(
                "00000000-0000-0000-0000-000000000000", stream.url, Recorder()
            ),
            30,
        )
    assert isinstance(failed.value.__cause__, NexusNotFoundError)


async def test_an_agent_not_bound_to_the_connections_workspace_gets_no_bridge(
    stack: Stack, setup: Setup, stream: StreamServer
) -> None:
    """The Bridge's fetches are GetToken calls: the same access decision holds."""
    admin = {"X-API-Key": stack.admin_key}
    async with httpx.AsyncClient(base_url=stack.rest_url, headers=admin, timeout=30) as rest:
        elsewhere = ok(
            await rest.post(
                "/admin/v1/agents",
                json={
                    "agent_id": "elsewhere-agent",
                    "allowed_scopes": ["stream:read"],
                    "bindings": {"providers": ["market-data"], "workspaces": ["someone-else"]},
                },
            )
        )
    options = NexusClientOptions(gateway_url=stack.rest_url, agent_key=elsewhere["agent_key"])
    async with AsyncNexusClient(options) as nexus:
        bridge = Bridge(nexus, options=OPTIONS)
        with pytest.raises(BridgeError) as failed:
            await asyncio.wait_for(
                bridge.maintain_websocket(setup.connection_id, stream.url, Recorder()), 30
            )
    cause = failed.value.__cause__
    # Not its connection reads as absent to the agent; the audit has WORKSPACE_NOT_BOUND.
    assert isinstance(cause, NexusNotFoundError) and cause.reason == "CONNECTION_NOT_FOUND"
    assert stream.opened == []


@pytest.fixture(scope="module")
def header_key_connection(stack: Stack, app: AppServer) -> str:
    """A connection whose key goes in an X-Api-Key header, which websockets
    does not drop on a redirect to another origin (it drops Authorization)."""
    admin = {"X-API-Key": stack.admin_key}
    with httpx.Client(base_url=stack.rest_url, headers=admin, timeout=30) as rest:
        return captured_connection(
            rest,
            app,
            {
                "name": "weather-stream",
                "auth_type": "api_key",
                "api_base_url": app.url,
                "user_info_endpoint": "/api/me",
                "params": {
                    "credential_schema": {
                        "fields": [{"name": "api_key", "in": "header", "key": "X-Api-Key"}]
                    }
                },
            },
            {"api_key": GOOD_API_KEY},
        )


async def test_a_websocket_redirect_to_another_origin_gets_no_credentials(
    client: AsyncNexusClient, header_key_connection: str
) -> None:
    with Elsewhere() as elsewhere, Redirector(ws(elsewhere.url)) as endpoint:
        bridge = Bridge(client, options=OPTIONS)
        with pytest.raises(BridgeError, match="another origin") as refused:
            await asyncio.wait_for(
                bridge.maintain_websocket(
                    header_key_connection, ws(endpoint.url) + "/stream?key=1", Recorder()
                ),
                30,
            )
    assert elsewhere.seen == []
    assert "key=1" not in str(refused.value)


async def test_plain_ws_to_another_host_is_refused_before_any_credentials_are_fetched(
    stack: Stack, setup: Setup
) -> None:
    fetched: list[str] = []
    hooks = {"request": [lambda request: _note(fetched, request)]}
    options = NexusClientOptions(gateway_url=stack.rest_url, agent_key=setup.agent_key)
    async with (
        httpx.AsyncClient(event_hooks=hooks) as http,
        AsyncNexusClient(options, http=http) as nexus,
    ):
        bridge = Bridge(nexus, options=OPTIONS)
        with pytest.raises(BridgeError, match="wss://"):
            await asyncio.wait_for(
                bridge.maintain_websocket(
                    setup.connection_id, "ws://stream.nexus-test.invalid/stream", Recorder()
                ),
                30,
            )
    assert fetched == []


async def _note(fetched: list[str], request: httpx.Request) -> None:
    fetched.append(request.url.path)


def ws(url: str) -> str:
    return url.replace("http://", "ws://", 1)


class CheckingHealth(health.aio.HealthServicer):
    """A provider's gRPC API: every call must carry a bearer token the provider accepts."""

    def __init__(self, idp: OidcServer) -> None:
        super().__init__()
        self.idp = idp
        self.tokens: list[str] = []
        self.refuse_next = False

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        metadata = dict(context.invocation_metadata() or ())
        authorization = metadata.get("authorization")
        if self.refuse_next or not await token_is_valid(self.idp, authorization):
            self.refuse_next = False
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid token")
        self.tokens.append(str(authorization))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


LOCAL = grpc.LocalConnectionType.LOCAL_TCP


@pytest.fixture
async def provider_api(idp: OidcServer) -> AsyncIterator[tuple[str, CheckingHealth]]:
    """A provider's gRPC API on loopback (local credentials stand in for TLS)."""
    server = grpc.aio.server()
    servicer = CheckingHealth(idp)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.local_server_credentials(LOCAL))
    await server.start()
    yield f"127.0.0.1:{port}", servicer
    await server.stop(0)


async def test_grpc_calls_carry_the_current_token_across_rotations(
    client: AsyncNexusClient, setup: Setup, provider_api: tuple[str, CheckingHealth]
) -> None:
    target, servicer = provider_api
    registry, bridge = metered(client)

    async def work(channel: grpc.aio.Channel) -> int:
        stub = health_pb2_grpc.HealthStub(channel)
        calls = 0
        # Long enough for the 6 s token to be renewed twice.
        while len(set(servicer.tokens)) < 3:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            calls += 1
            await asyncio.sleep(0.1)
        return calls

    calls = await asyncio.wait_for(
        bridge.maintain_grpc(
            setup.connection_id,
            target,
            work,
            channel_credentials=grpc.local_channel_credentials(LOCAL),
        ),
        60,
    )
    assert calls == len(servicer.tokens), "every call was accepted"
    renewed = sample(registry, "nexus_bridge_token_refreshes_total", setup.connection_id)
    assert renewed is not None and renewed >= 2
    assert sample(registry, "nexus_bridge_disconnects_total", setup.connection_id) == 0


async def test_a_grpc_run_that_fails_is_run_again_over_a_new_channel(
    client: AsyncNexusClient, setup: Setup, provider_api: tuple[str, CheckingHealth]
) -> None:
    target, servicer = provider_api
    servicer.refuse_next = True
    registry, bridge = metered(client)
    runs = 0

    async def work(channel: grpc.aio.Channel) -> str:
        nonlocal runs
        runs += 1
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    result = await asyncio.wait_for(
        bridge.maintain_grpc(
            setup.connection_id,
            target,
            work,
            channel_credentials=grpc.local_channel_credentials(LOCAL),
        ),
        30,
    )
    assert (result, runs) == ("SERVING", 2)
    assert sample(registry, "nexus_bridge_disconnects_total", setup.connection_id) == 1
    assert sample(registry, "nexus_bridge_connections_total", setup.connection_id) == 2
    assert sample(registry, "nexus_bridge_connection_status", setup.connection_id) == 0
