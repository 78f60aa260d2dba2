"""Hostile input over REST through the real Envoy, on PostgreSQL: each gets
a 4xx in the documented JSON error shape with an ErrorInfo reason, never a 5xx;
and an expiry past 2106 reaches the caller as a JSON number."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import httpx
import pytest

from tests.e2e.test_rest_providers import admin, error_reason
from tests.e2e.test_rest_sessions import connect, curl, ok
from tests.support.backend_auth_server import BackendAuthServer
from tests.support.oidc_server import OidcServer, behave
from tools.devstack import Stack


def _forged_page_token(position: object, query: dict[str, object]) -> str:
    """The unsigned format, with a fingerprint anyone can compute."""
    fingerprint = hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:16]
    payload = json.dumps({"p": position, "q": fingerprint}).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def test_a_6_kb_connection_id_is_a_400_that_names_the_field(
    rest: httpx.Client, stack: Stack
) -> None:
    huge = "c" * 6000
    for method, path in [
        ("GET", f"/v1/token/{huge}"),
        ("GET", f"/v1/check-connection/{huge}"),
        ("POST", f"/v1/refresh/{huge}"),
        ("DELETE", f"/v1/connections/{huge}"),
    ]:
        answer = rest.request(method, path, headers=admin(stack))
        assert answer.status_code == 400, (path[:30], answer.status_code, answer.text[:300])
        assert error_reason(answer) == "VALIDATION_FAILED"
        assert huge not in answer.text and len(answer.content) < 4096


def test_forged_page_tokens_are_a_400_on_every_list(rest: httpx.Client, stack: Stack) -> None:
    lists = {
        "/v1/providers": {"category": "", "auth_type": "", "show_deleted": False},
        "/v1/connections?workspace_id=w": {"workspace_id": "w"},
        "/v1/audit-events": {"resource": ""},
        "/admin/v1/agents": {},
    }
    for path, query in lists.items():
        for forged in (_forged_page_token(["not a date", 7], query), "garbage", "e30.AAAA"):
            joiner = "&" if "?" in path else "?"
            answer = rest.get(f"{path}{joiner}page_token={forged}", headers=admin(stack))
            assert answer.status_code == 400, (path, answer.text)
            assert error_reason(answer) == "INVALID_PAGE_TOKEN"


@pytest.mark.parametrize("depth", [40, 5_000, 200_000])
def test_a_deeply_nested_body_is_a_400_malformed_json(
    rest: httpx.Client, stack: Stack, depth: int
) -> None:
    body = '{"name": "deep", "auth_type": "nexus", "params": {"a": ' + "[" * depth + "]" * depth
    answer = rest.post("/v1/providers", headers=admin(stack), content=body + "}}")
    assert answer.status_code == 400, answer.text[:300]
    assert error_reason(answer) == "MALFORMED_JSON"
    assert "nests deeper" in answer.json()["message"]


def test_obo_for_a_user_id_over_255_characters_is_a_400(
    rest: httpx.Client, stack: Stack, backend: BackendAuthServer
) -> None:
    key = {"X-API-Key": stack.admin_key}
    ok(curl(rest, "/v1/providers", key, '{"name": "ops", "auth_type": "nexus", "scopes": ["x"]}'))
    agent = ok(curl(rest, "/admin/v1/agents", key, '{"agent_id": "ops", "allowed_scopes": ["x"]}'))
    user_token = backend.issue_token("u" * 300, permissions=["x"])
    body = {"agent_id": "ops", "provider": "ops", "scopes": ["x"], "user_context_token": user_token}
    answer = curl(
        rest,
        "/v1/obo-sessions",
        {"Authorization": f"Bearer {agent['agent_key']}"},
        json.dumps(body),
    )
    assert answer.status_code == 400, answer.text
    assert error_reason(answer) == "USER_CONTEXT_INVALID"


def test_an_expiry_past_2106_is_served_as_a_json_number(
    rest: httpx.Client, stack: Stack, idp: OidcServer
) -> None:
    key = {"X-API-Key": stack.admin_key}
    provider = ok(
        curl(
            rest,
            "/v1/providers",
            key,
            json.dumps(
                {
                    "name": "forever",
                    "auth_type": "oauth2",
                    "client_id": "c",
                    "client_secret": "s",
                    "auth_url": f"{idp.issuer}/authorize",
                    "token_url": f"{idp.issuer}/token",
                    "scopes": ["openid"],
                }
            ),
        )
    )
    behave(idp, expires_in=1e300)
    try:
        connection_id = connect(rest, key, provider["id"], ["openid"])
    finally:
        behave(idp, expires_in=None)
    answer = rest.get(f"/v1/token/{connection_id}", headers=key)
    assert answer.status_code == 200, answer.text
    expires_at = answer.json()["expires_at"]
    assert isinstance(expires_at, int | float) and not isinstance(expires_at, bool)
    assert expires_at == int(expires_at) and expires_at > 2**32
    assert abs(expires_at - (time.time() + 100 * 365 * 86400)) < 300
    # As the docs show it: a whole number, with no fraction.
    assert f'"expires_at":{int(expires_at)}' in answer.text.replace(" ", "")
