"""A moved token_url through the real Envoy: no refresh token reaches the new host until
a second admin confirms the move with ``POST /v1/providers/{id}:confirmEndpoints``.

Both hosts are real OAuth servers on loopback that count every refresh token
they are sent; PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.e2e.test_rest_providers import error_reason
from tests.support.browser import follow_until
from tests.support.rotating_provider import RotatingProvider
from tools.devstack import Stack

REVIEWER_KEY = "nxa_reviewer_0123456789abcdef0123456789"


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return {
        "NEXUS_ADMIN_API_KEYS": f"dev:nxa_mover_0123456789abcdef0123456789,reviewer:{REVIEWER_KEY}",
        "NEXUS_ENDPOINT_CONFIRMATION": "another_admin",
    }


@pytest.fixture(scope="module")
def home() -> Iterator[RotatingProvider]:
    with RotatingProvider() as server:
        yield server


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[RotatingProvider]:
    with RotatingProvider() as server:
        yield server


def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def test_a_moved_token_url_waits_for_another_admin_through_envoy(
    rest: httpx.Client, stack: Stack, home: RotatingProvider, elsewhere: RotatingProvider
) -> None:
    mover, reviewer = {"X-API-Key": stack.admin_key}, {"X-API-Key": REVIEWER_KEY}
    created = _ok(
        rest.post(
            "/v1/providers",
            headers=mover,
            json={
                "name": "rotating",
                "auth_type": "oauth2",
                "client_id": "nexus-client",
                "client_secret": "s3cret",
                "auth_url": f"{home.url}/authorize",
                "token_url": f"{home.url}/token",
                "scopes": ["contacts:read"],
            },
        )
    )
    started = _ok(
        rest.post(
            "/v1/request-connection",
            headers=mover,
            json={
                "workspace_id": "alice",
                "provider_name": "rotating",
                "return_url": "http://localhost:3000/done",
            },
        )
    )
    with httpx.Client(timeout=30) as browser:
        back = follow_until(browser, started["auth_url"], "http://localhost:3000")
    assert parse_qs(urlsplit(back.headers["location"]).query)["status"] == ["success"]
    _, refresh_token = home.issued[-1]

    moved = _ok(
        rest.patch(
            f"/v1/providers/{created['id']}",
            params={"update_mask": "token_url,client_secret"},
            headers=mover,
            json={"token_url": f"{elsewhere.url}/token", "client_secret": "made-up"},
        )
    )
    assert moved["endpoints_pending"] is True
    refresh = f"/v1/refresh/{started['connection_id']}"
    paused = rest.post(refresh, headers=mover)
    assert paused.status_code == 400 and error_reason(paused) == "PROVIDER_ENDPOINTS_PENDING"
    confirm = f"/v1/providers/{created['id']}:confirmEndpoints"
    itself = rest.post(confirm, headers=mover)
    assert itself.status_code == 403, itself.text
    assert error_reason(itself) == "CONFIRMATION_NEEDS_ANOTHER_ADMIN"
    assert elsewhere.refresh_calls == 0

    assert _ok(rest.post(confirm, headers=reviewer))["endpoints_pending"] is False
    rest.post(refresh, headers=mover)  # the new host does not know the token: whatever it says
    assert elsewhere.uses[refresh_token] == 1
