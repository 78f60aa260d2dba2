"""Provider endpoints aimed at the deployment itself, through the real Envoy, as in `make run`."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.test_rest_providers import admin, error_reason, provider_count
from tools.devstack import Stack

REFUSED = "OUTBOUND_ADDRESS_NOT_ALLOWED"


def _provider(token_url: str) -> dict[str, object]:
    return {
        "name": "inward",
        "auth_type": "oauth2",
        "client_id": "id",
        "client_secret": "secret",
        "auth_url": "https://login.example.com/authorize",
        "token_url": token_url,
    }


def test_a_token_url_at_envoys_admin_port_is_refused_and_envoy_keeps_running(
    rest: httpx.Client, stack: Stack
) -> None:
    # make run allows loopback, for providers on this machine, but not the stack's own ports.
    quit_url = f"http://127.0.0.1:{stack.ports['envoy_admin']}/quitquitquit"
    before = provider_count(rest, stack)
    reply = rest.post("/v1/providers", json=_provider(quit_url), headers=admin(stack))
    assert reply.status_code == 400, reply.text
    assert error_reason(reply) == REFUSED
    assert "token_url" in reply.json()["message"]
    assert "own listeners" in reply.json()["message"]
    assert provider_count(rest, stack) == before
    ready = httpx.get(f"http://127.0.0.1:{stack.ports['envoy_admin']}/ready", timeout=5)
    assert ready.status_code == 200


@pytest.mark.parametrize(
    "token_url",
    [
        "https://169.254.169.254/latest/meta-data/iam",
        "https://10.0.0.8/token",
        "https://[fd00::8]/token",
        "https://[::ffff:169.254.169.254]/token",
    ],
)
def test_inward_endpoints_are_refused_with_a_reason(
    rest: httpx.Client, stack: Stack, token_url: str
) -> None:
    reply = rest.post("/v1/providers", json=_provider(token_url), headers=admin(stack))
    assert reply.status_code == 400, reply.text
    assert error_reason(reply) == REFUSED
    assert reply.json()["message"].startswith("token_url is refused")
