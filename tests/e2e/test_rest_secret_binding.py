"""Through the real Envoy on PostgreSQL: a stored secret stays bound to its
endpoints, names are whole slugs, and the JWK Set carries Cache-Control."""

from __future__ import annotations

import json
import re
import time

import httpx

from tests.e2e.test_rest_providers import SALESFORCE, admin, error_reason
from tools.devstack import Stack

EVIL_TOKEN_URL = "https://collector.example/token"


def _create(rest: httpx.Client, stack: Stack, name: str) -> dict[str, object]:
    body = json.loads(SALESFORCE) | {"name": name}
    created = rest.post("/v1/providers", headers=admin(stack), json=body)
    assert created.status_code == 200, created.text
    result: dict[str, object] = created.json()
    return result


def test_moving_the_token_url_needs_the_client_secret_again(
    rest: httpx.Client, stack: Stack
) -> None:
    created = _create(rest, stack, "bound-crm")
    refused = rest.patch(
        "/v1/providers/bound-crm",
        params={"update_mask": "token_url"},
        headers=admin(stack),
        json={"token_url": EVIL_TOKEN_URL},
    )
    assert refused.status_code == 400, refused.text
    assert error_reason(refused) == "SECRET_REQUIRED_FOR_ENDPOINT_CHANGE"
    assert refused.json()["details"][0]["metadata"] == {"fields": "token_url"}
    assert "token_url" in refused.json()["message"]
    unchanged = rest.get("/v1/providers/bound-crm", headers=admin(stack)).json()
    assert unchanged["token_url"] == created["token_url"]

    moved = rest.patch(
        "/v1/providers/bound-crm",
        params={"update_mask": "token_url,client_secret"},
        headers=admin(stack),
        json={"token_url": EVIL_TOKEN_URL, "client_secret": "ROTATED_SECRET"},
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["token_url"] == EVIL_TOKEN_URL
    events = rest.get(
        "/v1/audit-events", params={"resource": f"providers/{created['id']}"}, headers=admin(stack)
    )
    (change,) = (
        e for e in events.json()["audit_events"] if e["action"] == "provider.endpoint_change"
    )
    assert change["details"]["endpoints"] == {
        "token_url": {"old": created["token_url"], "new": EVIL_TOKEN_URL}
    }
    assert "ROTATED_SECRET" not in events.text and "SF_CLIENT_SECRET" not in events.text


def test_a_name_with_a_trailing_newline_is_refused(rest: httpx.Client, stack: Stack) -> None:
    body = json.loads(SALESFORCE) | {"name": "crm\n"}
    refused = rest.post("/v1/providers", headers=admin(stack), json=body)
    assert refused.status_code == 400, refused.text
    assert error_reason(refused) == "VALIDATION_FAILED"
    assert refused.json()["details"][0]["metadata"]["field"] == "name"


def test_the_jwk_set_reaches_clients_with_a_bounded_cache_control(
    rest: httpx.Client, stack: Stack
) -> None:
    first = rest.get("/.well-known/jwks.json")
    assert first.status_code == 200, first.text
    assert first.json()["keys"]
    match = re.fullmatch(r"public, max-age=(\d+)", first.headers.get("cache-control", ""))
    assert match is not None, first.headers
    assert 0 < int(match[1]) <= 60
    time.sleep(1.1)
    again = rest.get("/.well-known/jwks.json")
    assert again.json() == first.json()
    # The age counts down with the in-memory set, so no cache holds it longer.
    assert int(again.headers["cache-control"].rsplit("=", 1)[1]) < int(match[1])
