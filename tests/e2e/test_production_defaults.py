"""The agent-sessions guide against a production deployment (NEXUS_ENVIRONMENT
unset): the same Steps 1-3, then Step 4 is refused twice, each time with the
fix in the answer, and works once an admin applied both fixes as given."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from tests.e2e.test_rest_providers import error_reason
from tests.e2e.test_rest_sessions import bearer, curl, guide, ok
from tools.devstack import Stack

__all__ = ["guide"]  # the guide's fixture, run here against production

_PATCH = re.compile(r"PATCH (/\S+) (\{.*\})")


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return {"NEXUS_ENVIRONMENT": "production"}


def _the_fix(message: str) -> tuple[str, dict[str, Any]]:
    found = _PATCH.search(message)
    assert found is not None, message
    return found[1], json.loads(found[2])


def test_production_refuses_the_unbound_agent_then_the_broader_token_each_with_its_fix(
    rest: httpx.Client, stack: Stack, guide: dict[str, Any]
) -> None:
    admin = {"X-API-Key": stack.admin_key}
    asked = json.dumps(
        {"agent_id": "crm-agent", "provider": "salesforce", "scopes": ["crm:contacts:read"]}
    )

    unbound = curl(rest, "/v1/agent-sessions", bearer(guide, "crm-agent"), asked)
    assert unbound.status_code == 403 and error_reason(unbound) == "AGENT_NOT_BOUND"
    path, body = _the_fix(unbound.json()["message"])
    assert body == {"bindings": {"providers": ["salesforce"], "workspaces": ["<workspace_id>"]}}
    body["bindings"]["workspaces"] = ["user_sarah"]
    bound = ok(rest.patch(path, headers=admin, json=body))
    assert bound["bindings"]["providers"] == ["salesforce"]

    broader = curl(rest, "/v1/agent-sessions", bearer(guide, "crm-agent"), asked)
    assert broader.status_code == 403 and error_reason(broader) == "TOKEN_BROADER_THAN_SESSION"
    message = broader.json()["message"]
    assert "crm:contacts:write" in message and '"allow_broader_session_tokens": true' in message
    provider_path = re.search(r"PATCH (/v1/providers/\S+)\)", message)
    assert provider_path is not None
    ok(
        rest.patch(
            provider_path[1],
            headers=admin,
            json={"params": {"skip_scope_on_exchange": True, "allow_broader_session_tokens": True}},
        )
    )

    session = ok(curl(rest, "/v1/agent-sessions", bearer(guide, "crm-agent"), asked))
    assert session["scopes"] == ["crm:contacts:read"]
    assert session["token_scopes"] == ["crm:contacts:read", "crm:contacts:write"]


def test_production_refuses_an_unbound_agents_get_token(
    rest: httpx.Client, guide: dict[str, Any]
) -> None:
    connection_id = guide["connections"]["google-calendar"]
    refused = rest.get(f"/v1/token/{connection_id}", headers=bearer(guide, "calendar-agent"))
    assert refused.status_code == 403 and error_reason(refused) == "AGENT_NOT_BOUND"
    assert "PATCH /admin/v1/agents/calendar-agent" in refused.json()["message"]
    assert '"workspaces": ["user_sarah"]' in refused.json()["message"]
