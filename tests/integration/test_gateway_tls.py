"""The gateway's public listeners with TLS on (NEXUS_GATEWAY_TLS_*), gRPC and the browser
pages alike: clients that speak plaintext are refused, and clients with keys, not
certificates, are served."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc
import httpx
import pytest
from nexus.gateway.v1 import gateway_pb2_grpc
from nexus.policy.v1 import agents_pb2

from tests.conftest import Services
from tests.integration.helpers import ADMIN
from tools.devcerts import write_set
from tools.devstack import free_port


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    write_set(directory, ("gateway",))
    return directory


@pytest.fixture
def gateway_port() -> int:
    return free_port()


@pytest.fixture
def per_service_overrides(certs: Path, gateway_port: int) -> dict[str, dict[str, str]]:
    return {
        "gateway": {
            "NEXUS_GATEWAY_LISTEN": f"127.0.0.1:{gateway_port}",
            "NEXUS_GATEWAY_TLS_CERT_FILE": str(certs / "gateway.pem"),
            "NEXUS_GATEWAY_TLS_KEY_FILE": str(certs / "gateway-key.pem"),
        }
    }


async def test_the_public_listener_serves_tls_only_and_asks_no_client_certificate(
    services: Services, certs: Path, gateway_port: int
) -> None:
    request = agents_pb2.ListAgentsRequest()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway_port}") as plaintext:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway_pb2_grpc.AgentServiceStub(plaintext).ListAgents(
                request, metadata=ADMIN, timeout=30
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    credentials = grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{gateway_port}", credentials) as channel:
        listed = await gateway_pb2_grpc.AgentServiceStub(channel).ListAgents(
            request, metadata=ADMIN
        )
    assert list(listed.agents) == []


async def test_the_browser_pages_are_served_over_tls_only(services: Services, certs: Path) -> None:
    port = services.browser_url.rpartition(":")[2]
    with pytest.raises(httpx.TransportError):
        async with httpx.AsyncClient() as plaintext:
            await plaintext.get(f"http://127.0.0.1:{port}/v1/connect/unknown")
    trusted = ssl.create_default_context(cafile=certs / "ca.pem")
    async with httpx.AsyncClient(verify=trusted) as browser:
        page = await browser.get(f"https://localhost:{port}/v1/connect/unknown")
    # The gateway's own page, reached over a handshake the services' CA vouches for.
    assert page.status_code == 400
    assert "text/html" in page.headers["content-type"]
