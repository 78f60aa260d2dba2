"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.oidc_server import OidcServer, start_oidc_server


@pytest.fixture
def idp() -> Iterator[OidcServer]:
    """The real OAuth/OIDC server from npm, fresh for each test."""
    with start_oidc_server() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client
