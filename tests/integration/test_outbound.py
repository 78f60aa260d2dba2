"""Outbound calls cannot be aimed inward.

At registration, over gRPC on SQLite and PostgreSQL; at connect time, with real
sockets on loopback. Only the DNS rebinding test injects a resolver: a name
that answers differently from one lookup to the next cannot be set up here.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler

import grpc
import httpx
import pytest
from nexus.broker.v1 import providers_pb2
from nexus.gateway.v1 import gateway_pb2
from nexus_broker.adapters.rfc6749 import ClientCredentials, TokenEndpointError
from nexus_broker.server import create_core, migrate_database
from nexus_broker.service_layer.providers import create_provider
from nexus_broker.settings import BrokerSettings
from nexus_common import (
    AddressRefused,
    BodyTooLarge,
    DeadlineExceeded,
    OutboundAddressNotAllowed,
    OutboundPolicy,
    RedirectRefused,
    outbound_client,
)

from tests.conftest import Services, service_env
from tests.integration.helpers import ADMIN, expect_error
from tests.integration.test_provider_registry import api_key_provider, create, salesforce, stubs
from tests.samples import SALESFORCE_SPEC
from tests.support.loopback import LoopbackServer, owner

INVALID = grpc.StatusCode.INVALID_ARGUMENT
REFUSED = "OUTBOUND_ADDRESS_NOT_ALLOWED"
PRODUCTION_OUTBOUND = {"NEXUS_OUTBOUND_ALLOWED_NETWORKS": ""}
# One host of each address class, as written in a URL, and the class the error names.
INWARD = [
    ("127.0.0.1", "loopback"),
    ("localhost", "loopback"),
    ("[::1]", "loopback"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.10.10", "link-local"),
    ("[fe80::1]", "link-local"),
    ("10.1.2.3", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("[fd00::1]", "unique local"),
    ("224.0.0.1", "multicast"),
    ("[ff02::1]", "multicast"),
    ("0.0.0.0", "unspecified"),  # noqa: S104 (a destination, not a bind)
    ("[::ffff:127.0.0.1]", "loopback"),
    ("[::ffff:169.254.169.254]", "cloud metadata"),
    ("[::ffff:10.0.0.1]", "private"),
]
OAUTH_FIELDS = ("token_url", "auth_url", "jwks_uri", "revocation_url", "issuer")


class _Listener:
    """A bare TCP listener on loopback that counts the connections it accepts."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def listener() -> Iterator[_Listener]:
    running = _Listener()
    yield running
    running.close()


class _Site(LoopbackServer):
    """Serves ``pages``: path -> (status, headers, body); counts the requests."""

    def __init__(self, pages: dict[str, tuple[int, dict[str, str], bytes]]) -> None:
        self.pages = pages
        self.hits = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                site = owner(self)
                site.hits += 1
                status, headers, body = site.pages.get(self.path, (404, {}, b""))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


def _discovery(issuer: str, **endpoints: str) -> bytes:
    document = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks",
        "response_types_supported": ["code"],
        **endpoints,
    }
    return json.dumps(document).encode()


def _policy(allowed: str = "", **changes: object) -> OutboundPolicy:
    policy = OutboundPolicy.parse(
        allowed_networks=allowed, denied_ports="", max_body_bytes=64 * 1024, deadline_seconds=1.0
    )
    return replace(policy, **changes)  # type: ignore[arg-type]


# --- at registration, over gRPC -------------------------------------------------------------


@pytest.mark.parametrize("service_overrides", [PRODUCTION_OUTBOUND])
async def test_every_inward_address_class_is_refused_at_registration(
    services: Services,
) -> None:
    registry, _ = stubs(services)
    for host, kind in INWARD:
        # Every field is checked alike: each class once in token_url, every field once.
        fields = OAUTH_FIELDS if host == "169.254.169.254" else ("token_url",)
        for field in fields:
            message = await expect_error(
                create(services, salesforce(**{field: f"https://{host}:9443/x"})), INVALID, REFUSED
            )
            assert message.startswith(f"{field} is refused") and f"({kind})" in message, message
        api = api_key_provider("weather")
        api.api_base_url = f"https://{host}/v1"
        message = await expect_error(create(services, api), INVALID, REFUSED)
        assert message.startswith("api_base_url is refused"), message
    listed = await registry.ListProviders(
        providers_pb2.ListProvidersRequest(show_deleted=True), metadata=ADMIN
    )
    assert list(listed.providers) == []


@pytest.mark.parametrize("service_overrides", [PRODUCTION_OUTBOUND])
async def test_an_update_pointing_inward_is_refused_and_changes_nothing(
    services: Services,
) -> None:
    registry, _ = stubs(services)
    created = await create(services, salesforce())
    request = gateway_pb2.UpdateProviderRequest(
        id=created.id, provider=salesforce(token_url="https://169.254.169.254/latest/meta-data")
    )
    # With the secret given again, so that the address check is what refuses the move.
    request.update_mask.paths.extend(["token_url", "client_secret"])
    await expect_error(registry.UpdateProvider(request, metadata=ADMIN), INVALID, REFUSED)
    stored = await registry.GetProvider(
        providers_pb2.GetProviderRequest(id=created.id), metadata=ADMIN
    )
    assert stored.token_url == created.token_url


async def test_a_name_that_does_not_resolve_now_is_accepted(services: Services) -> None:
    created = await create(services, salesforce(token_url="https://nexus-test.invalid/token"))
    assert created.token_url == "https://nexus-test.invalid/token"


@pytest.mark.parametrize(
    ("field", "inward"),
    [("token_endpoint", "https://10.0.0.5/token"), ("jwks_uri", "https://169.254.169.254/jwks")],
)
async def test_a_discovery_document_pointing_inward_is_refused(
    services: Services, field: str, inward: str
) -> None:
    with _Site({}) as issuer:
        path = "/.well-known/openid-configuration"
        issuer.pages[path] = (200, {}, _discovery(issuer.url, **{field: inward}))
        provider = salesforce(issuer=issuer.url, enable_discovery=True, auth_url="", token_url="")
        message = await expect_error(create(services, provider), INVALID, REFUSED)
    assert message.startswith(f"the discovery document's {field} is refused"), message


async def test_a_redirect_from_the_issuer_is_never_followed(services: Services) -> None:
    path = "/.well-known/openid-configuration"
    with _Site({}) as elsewhere, _Site({}) as issuer:
        elsewhere.pages[path] = (200, {}, _discovery(issuer.url))
        issuer.pages[path] = (302, {"Location": f"{elsewhere.url}{path}"}, b"")
        provider = salesforce(issuer=issuer.url, enable_discovery=True, auth_url="", token_url="")
        message = await expect_error(
            create(services, provider), INVALID, "DISCOVERY_DOCUMENT_INVALID"
        )
        assert "never follow redirects" in message, message
        assert (issuer.hits, elsewhere.hits) == (1, 0)


# --- at connect time, with real sockets -----------------------------------------------------


@pytest.mark.parametrize(("host", "kind"), INWARD)
async def test_every_inward_address_class_is_refused_at_connect_time(
    listener: _Listener, host: str, kind: str
) -> None:
    async with outbound_client(_policy(), httpx.Timeout(2)) as client:
        for url in (f"https://{host}:{listener.port}/", f"http://{host}:{listener.port}/"):
            with pytest.raises(AddressRefused, match=rf"\({kind}\)"):
                await client.get(url)
    assert listener.accepted == 0


@pytest.mark.parametrize("address", ["127.0.0.1", "::ffff:127.0.0.1", "10.9.8.7", "fd00::2"])
async def test_a_name_resolving_inward_is_refused_at_connect_time(
    listener: _Listener, address: str
) -> None:
    async def resolve(host: str, port: int) -> Sequence[str]:
        return ["93.184.216.34", address]  # one public answer does not make the name safe

    async with outbound_client(_policy(resolver=resolve), httpx.Timeout(2)) as client:
        with pytest.raises(AddressRefused, match=r"inward\.example"):
            await client.get(f"https://inward.example:{listener.port}/")
    assert listener.accepted == 0


async def test_dns_rebinding_is_refused_at_connect_time(
    database_url: str, keyring_spec: str, listener: _Listener
) -> None:
    """The name is public when the provider is registered, and loopback when it is called."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])

    async def rebinding(host: str, port: int) -> Sequence[str]:
        if host != "rebind.example":
            raise socket.gaierror(socket.EAI_NONAME, "no Internet here")
        return next(answers)

    migrate_database(database_url)
    settings = BrokerSettings.from_env(service_env(database_url, keyring_spec))
    # Production's policy: no address that is not public.
    outbound = replace(settings.outbound, allowed_networks=(), resolver=rebinding)
    core = create_core(replace(settings, outbound=outbound))
    try:
        token_url = f"https://rebind.example:{listener.port}/token"
        spec = replace(SALESFORCE_SPEC, name="rebinding", token_url=token_url)
        provider = await create_provider(spec, core.deps)
        assert provider.token_url == token_url
        client = ClientCredentials("id", "secret", "client_secret_post")
        with pytest.raises(TokenEndpointError) as caught:
            await core.connections.tokens.refresh(
                token_url, client, refresh_token="rt", scopes=None, now=datetime.now(UTC)
            )
    finally:
        await core.close()
    assert "rebind.example (127.0.0.1) is not a public address (loopback)" in caught.value.message
    assert listener.accepted == 0


async def test_a_redirect_is_never_followed() -> None:
    with _Site({"/": (200, {}, b"inside")}) as target, _Site({}) as site:
        site.pages["/token"] = (307, {"Location": f"{target.url}/"}, b"")
        async with outbound_client(_policy("127.0.0.0/8"), httpx.Timeout(2)) as client:
            with pytest.raises(RedirectRefused, match="HTTP 307"):
                await client.get(f"{site.url}/token", follow_redirects=True)
        assert (site.hits, target.hits) == (1, 0)


class _Endless(LoopbackServer):
    """Answers 200 and then sends ``chunk`` every ``pause`` seconds until the client leaves."""

    def __init__(self, chunk: bytes, pause: float) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                        time.sleep(pause)
                except OSError:
                    return

            do_POST = do_GET

        super().__init__(Handler)


async def test_a_body_is_read_no_further_than_the_cap() -> None:
    with _Endless(b"x" * 16384, 0.0) as server:
        async with outbound_client(_policy("127.0.0.0/8"), httpx.Timeout(5)) as client:
            with pytest.raises(BodyTooLarge, match="more than 65536 bytes"):
                await client.get(server.url)


async def test_a_token_endpoint_body_is_capped_at_64_kib(
    database_url: str, keyring_spec: str
) -> None:
    settings = BrokerSettings.from_env(service_env(database_url, keyring_spec))
    core = create_core(settings)  # the broker's own client: loopback allowed, 1 MiB cap
    try:
        with _Endless(b"{" + b" " * 8191, 0.0) as server:
            with pytest.raises(TokenEndpointError, match="more than 64 KiB"):
                await core.connections.tokens.refresh(
                    f"{server.url}/token",
                    ClientCredentials("id", "secret", "client_secret_post"),
                    refresh_token="rt",
                    scopes=None,
                    now=datetime.now(UTC),
                )
    finally:
        await core.close()


async def test_a_stalling_server_meets_the_total_deadline() -> None:
    # Each byte arrives well within the read timeout; only the total deadline ends the call.
    with _Endless(b"x", 0.2) as server:
        async with outbound_client(_policy("127.0.0.0/8"), httpx.Timeout(5)) as client:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await client.get(server.url)
            elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.5


async def test_a_refused_url_is_explained_without_calling_it() -> None:
    with _Site({}) as site:
        refusal = await _policy().url_refusal(f"{site.url}/token")
        assert refusal is not None and "loopback" in refusal
        assert site.hits == 0
    error = OutboundAddressNotAllowed(refusal, field="token_url")
    assert error.reason == REFUSED and error.grpc_status == "INVALID_ARGUMENT"
    await asyncio.sleep(0)
