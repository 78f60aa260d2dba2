"""The whole stack as users run it: policy, broker and gateway processes behind
the real Envoy binary, on PostgreSQL, with a real customer backend for OBO."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.e2e.agent_guide import Guide
from tests.e2e.test_rest_sessions import connect, ok
from tests.support.backend_auth_server import BackendAuthServer
from tests.support.oidc_server import OidcServer, start_oidc_server
from tests.support.postgres import fresh_database, postgres_url
from tools.devstack import DEV_PORTS, Stack, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """Headless Debian Chromium driven by Selenium. Outside CI it is skipped when
    not installed; in CI (CI=true) a missing Chromium fails, since .ci/run installs it."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        message = f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    browser.set_page_load_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    """Settings a test module adds to its stack's."""
    return {}


@pytest.fixture(scope="module")
def stack_tls() -> bool:
    """Whether a test module's stack runs as deploy/k8s does: mutual TLS between the
    services, TLS from Envoy to the gateway."""
    return False


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    backend: BackendAuthServer,
    stack_env: dict[str, str],
    stack_tls: bool,
) -> Iterator[Stack]:
    url, drop = fresh_database(postgres_url())
    ports = {name: free_port() for name in DEV_PORTS}
    running = Stack(
        Path(tmp_path_factory.mktemp("stack")),
        ports,
        env={
            "NEXUS_BROKER_DATABASE_URL": url,
            "NEXUS_POLICY_DATABASE_URL": url,
            "NEXUS_BACKEND_AUTH_URL": backend.url,
            "NEXUS_DISCOVERY_TIMEOUT_SECONDS": "3",
            "NEXUS_DISCOVERY_RETRY_SECONDS": "0",
            "NEXUS_REFRESH_INTERVAL_SECONDS": "0.5",
            "NEXUS_FORCED_REFRESH_INTERVAL_SECONDS": "0",
            **stack_env,
        },
        tls=stack_tls,
    ).start()
    try:
        yield running
    finally:
        running.stop()
        drop()


@pytest.fixture
def rest(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.rest_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcServer]:
    with start_oidc_server() as server:
        yield server


@pytest.fixture(scope="module")
def guide(stack: Stack, idp: OidcServer) -> Guide:
    """Steps 1-3 of the agent-sessions guide over REST, as an admin does them once."""
    admin = {"X-API-Key": stack.admin_key}
    with httpx.Client(base_url=stack.rest_url, headers=admin, timeout=30) as rest:
        salesforce = ok(
            rest.post(
                "/v1/providers",
                json={
                    "name": "salesforce",
                    "auth_type": "oauth2",
                    "client_id": "SF_CLIENT_ID",
                    "client_secret": "SF_CLIENT_SECRET",
                    "auth_url": f"{idp.issuer}/authorize",
                    "token_url": f"{idp.issuer}/token",
                    "scopes": ["crm:contacts:read", "crm:contacts:write"],
                    "params": {"skip_scope_on_exchange": True},
                },
            )
        )
        # acme:treasury exists, but no agent may ask for it.
        ok(
            rest.post(
                "/v1/providers",
                json={
                    "name": "internal-ops",
                    "auth_type": "nexus",
                    "scopes": ["acme:gliding", "acme:flaring", "acme:treasury"],
                },
            )
        )
        crm = ok(
            rest.post(
                "/admin/v1/agents",
                json={"agent_id": "crm-agent", "allowed_scopes": ["crm:contacts:read"]},
            )
        )
        ops = ok(
            rest.post(
                "/admin/v1/agents",
                json={"agent_id": "ops-agent", "allowed_scopes": ["acme:gliding", "acme:flaring"]},
            )
        )
        connection_id = connect(
            rest, admin, salesforce["id"], ["crm:contacts:read", "crm:contacts:write"]
        )
    return Guide(crm["agent_key"], ops["agent_key"], connection_id)
