"""PATCH /admin/v1/agents/{id} through Envoy: an update mask that names
``enabled`` needs a value for it. A disabled agent is never re-enabled by a
request that did not say ``enabled: true`` (AIP-134 field masks)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tools.devstack import Stack

pytestmark = pytest.mark.postgres


def _admin(stack: Stack) -> dict[str, str]:
    return {"X-API-Key": stack.admin_key}


def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def _enabled(rest: httpx.Client, stack: Stack, agent_id: str) -> bool:
    agent = _ok(rest.get(f"/admin/v1/agents/{agent_id}", headers=_admin(stack)))
    return bool(agent.get("enabled", False))


@pytest.mark.parametrize(
    ("mask", "body"),
    [
        ("enabled", {}),
        ("enabled", {"description": "nothing about enabled"}),
        ("enabled,description", {"description": "still disabled"}),
        ("description,enabled", {"agent_id": "sleeper-agent"}),
    ],
)
def test_a_mask_naming_enabled_without_a_value_leaves_a_disabled_agent_disabled(
    rest: httpx.Client, stack: Stack, mask: str, body: dict[str, Any]
) -> None:
    admin = _admin(stack)
    if rest.get("/admin/v1/agents/sleeper-agent", headers=admin).status_code == 404:
        _ok(
            rest.post(
                "/admin/v1/agents",
                headers=admin,
                json={"agent_id": "sleeper-agent", "allowed_scopes": ["crm:contacts:read"]},
            )
        )
    _ok(rest.patch("/admin/v1/agents/sleeper-agent", headers=admin, json={"enabled": False}))

    refused = rest.patch(
        "/admin/v1/agents/sleeper-agent", headers=admin, params={"update_mask": mask}, json=body
    )

    assert refused.status_code == 400, refused.text
    (detail,) = refused.json()["details"]
    assert detail["reason"] == "VALIDATION_FAILED"
    assert "enabled" in refused.json()["message"]
    assert _enabled(rest, stack, "sleeper-agent") is False


def test_enabled_in_the_mask_with_a_value_is_applied(rest: httpx.Client, stack: Stack) -> None:
    admin = _admin(stack)
    _ok(
        rest.post(
            "/admin/v1/agents",
            headers=admin,
            json={"agent_id": "woken-agent", "allowed_scopes": ["crm:contacts:read"]},
        )
    )
    path = "/admin/v1/agents/woken-agent"
    for value in (False, True, False):
        _ok(
            rest.patch(
                path, headers=admin, params={"update_mask": "enabled"}, json={"enabled": value}
            )
        )
        assert _enabled(rest, stack, "woken-agent") is value
