"""Forced refreshes through the real Envoy on PostgreSQL, with the production
window: however many callers force a refresh, at most one call per window
reaches the provider, and the rest get 429 with when to come back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
import pytest

from tests.e2e.test_access import CRM_SCOPES, _ok, connect_crm, register_crm
from tests.support.oidc_server import OidcServer, start_oidc_server, stats
from tools.devstack import Stack

WINDOW = 4


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return {
        "NEXUS_ENVIRONMENT": "production",
        "NEXUS_FORCED_REFRESH_INTERVAL_SECONDS": str(WINDOW),
    }


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcServer]:
    with start_oidc_server() as server:
        yield server


def test_forced_refreshes_through_envoy_make_one_provider_call_per_window(
    rest: httpx.Client, stack: Stack, idp: OidcServer
) -> None:
    admin = {"X-API-Key": stack.admin_key}
    register_crm(rest, admin, idp)
    connection_id = connect_crm(rest, admin, "alice")
    key = _ok(
        rest.post(
            "/admin/v1/agents",
            headers=admin,
            json={
                "agent_id": "eager-agent",
                "allowed_scopes": CRM_SCOPES,
                "bindings": {"providers": ["crm"], "workspaces": ["alice"]},
            },
        )
    )["agent_key"]
    checked = _ok(rest.get(f"/v1/check-connection/{connection_id}", headers=admin))
    # Connecting counts as a refresh: the first window opens WINDOW seconds after.
    opens = datetime.fromisoformat(checked["last_refreshed_at"]).timestamp() + WINDOW
    time.sleep(max(0.0, opens - time.time()) + 0.2)
    before = stats(idp)["token_calls"].get("refresh_token", 0)  # type: ignore[union-attr]

    def force(_: int) -> httpx.Response:
        with httpx.Client(base_url=stack.rest_url, timeout=30) as client:
            return client.post(
                f"/v1/refresh/{connection_id}", headers={"Authorization": f"Bearer {key}"}
            )

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(force, range(10)))
    answers += [force(i) for i in range(10)]

    assert stats(idp)["token_calls"]["refresh_token"] == before + 1  # type: ignore[index]
    limited = [a for a in answers if a.status_code != 200]
    assert len(limited) >= 10
    for answer in limited:
        assert answer.status_code == 429, answer.text
        (detail,) = answer.json()["details"]
        assert detail["reason"] == "REFRESH_RATE_LIMITED"
        assert 1 <= int(detail["metadata"]["retry_after_seconds"]) <= WINDOW
