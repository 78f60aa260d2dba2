"""A resource-server key through the real Envoy: the service behind a provider
introspects the session tokens sent to it over REST, and nothing else."""

from __future__ import annotations

import httpx
import pytest
from nexus_sdk import Introspection, NexusClient, NexusClientOptions

from tests.e2e.test_rest_providers import error_reason
from tests.e2e.test_rest_sessions import ok
from tools.devstack import Stack

OPS_KEY = "nxrs_internal_ops_0123456789abcdefghij"


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return {"NEXUS_RESOURCE_SERVER_KEYS": f"internal-ops:{OPS_KEY}"}


def test_a_resource_server_key_introspects_its_providers_tokens_over_rest(
    stack: Stack, rest: httpx.Client
) -> None:
    admin = {"X-API-Key": stack.admin_key}
    for name, scope in (("internal-ops", "acme:gliding"), ("billing-ops", "billing:read")):
        ok(
            rest.post(
                "/v1/providers",
                headers=admin,
                json={
                    "name": name,
                    "auth_type": "nexus",
                    "scopes": [scope],
                },
            )
        )
    agent = ok(
        rest.post(
            "/admin/v1/agents",
            headers=admin,
            json={
                "agent_id": "ops-agent",
                "allowed_scopes": ["acme:gliding", "billing:read"],
            },
        )
    )
    bearer = {"Authorization": f"Bearer {agent['agent_key']}"}
    tokens = {
        provider: ok(
            rest.post(
                "/v1/agent-sessions",
                headers=bearer,
                json={
                    "agent_id": "ops-agent",
                    "provider": provider,
                    "scopes": [scope],
                },
            )
        )["session_token"]
        for provider, scope in (("internal-ops", "acme:gliding"), ("billing-ops", "billing:read"))
    }
    resource_server = {"X-API-Key": OPS_KEY}

    def introspect(token: str) -> dict[str, object]:
        answer: dict[str, object] = ok(
            rest.post(
                "/v1/agent-sessions:introspect", headers=resource_server, json={"token": token}
            )
        )
        return answer

    ours = introspect(tokens["internal-ops"])
    assert ours["active"] is True and ours["aud"] == "internal-ops"
    assert introspect(tokens["billing-ops"]) == {"active": False}
    # The Python SDK, as a resource server uses it.
    options = NexusClientOptions(gateway_url=stack.rest_url, api_key=OPS_KEY)
    with NexusClient(options) as nexus:
        assert nexus.introspect_session(tokens["internal-ops"]).scopes == ("acme:gliding",)
        assert nexus.introspect_session(tokens["billing-ops"]) == Introspection(False, {})

    for method, path in (
        ("GET", "/v1/providers"),
        ("GET", "/admin/v1/agents"),
        ("POST", "/v1/agent-sessions"),
        ("GET", "/v1/token/00000000-0000-4000-8000-000000000000"),
    ):
        refused = rest.request(method, path, headers=resource_server, json={})
        assert refused.status_code == 403, (path, refused.text)
        assert error_reason(refused) == "CALLER_NOT_ALLOWED"
