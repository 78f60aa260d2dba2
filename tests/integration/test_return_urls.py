"""RequestConnection judges a return URL as the browser that follows it will:
one that a browser sends elsewhere than the allowlist says is refused before
any connection exists (WHATWG URL Standard; urlsplit reads these differently)."""

from __future__ import annotations

import grpc
import pytest

from tests.conftest import Services
from tests.integration.helpers import expect_error
from tests.integration.test_connections import register_idp, start
from tests.support.oidc_server import OidcServer


@pytest.fixture
def service_overrides() -> dict[str, str]:
    return {"NEXUS_RETURN_URL_ALLOWLIST": "http://*.localhost:*"}


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.example\\.app.localhost:8000/done",
        "http://app.localhost:8000\\@evil.example/done",
    ],
)
async def test_a_return_url_a_browser_reads_as_another_host_is_refused(
    services: Services, idp: OidcServer, url: str
) -> None:
    await register_idp(services, idp)
    await expect_error(
        start(services, url), grpc.StatusCode.INVALID_ARGUMENT, "RETURN_URL_NOT_ALLOWED"
    )
    # The same allowlist still admits a plain subdomain.
    started = await start(services, "http://app.localhost:8000/done")
    assert started.connection_id
