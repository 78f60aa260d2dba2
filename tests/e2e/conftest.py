"""The whole stack as users run it: policy, broker and gateway processes behind
the real Envoy binary, on PostgreSQL, with a real customer backend for OBO."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.backend_auth_server import BackendAuthServer
from tests.support.postgres import fresh_database, postgres_url
from tools.devstack import DEV_PORTS, Stack, free_port


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    """Settings a test module adds to its stack's."""
    return {}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    backend: BackendAuthServer,
    stack_env: dict[str, str],
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
