"""Connections through the real Envoy: the browser flow, the documented token
shape, bad input, and two brokers sharing PostgreSQL refreshing each due
connection exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support.app_server import GOOD_API_KEY, AppServer
from tests.support.oidc_server import OidcServer, behave, start_oidc_server, stats
from tests.support.processes import reap
from tools.devstack import ROOT, Stack, free_port


@pytest.fixture
def idp() -> Iterator[OidcServer]:
    with start_oidc_server() as server:
        yield server


def admin(stack: Stack) -> dict[str, str]:
    return {"X-API-Key": stack.admin_key}


def register_idp(rest: httpx.Client, stack: Stack, idp: OidcServer, name: str) -> str:
    created = rest.post(
        "/v1/providers",
        headers=admin(stack),
        json={
            "name": name,
            "auth_type": "oauth2",
            "client_id": "nexus-client",
            "client_secret": "s3cret",
            "issuer": idp.issuer,
            "enable_discovery": True,
            "scopes": ["openid", "crm:contacts:read"],
        },
    )
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def ensure_provider(rest: httpx.Client, stack: Stack, spec: dict[str, Any]) -> str:
    """The id of the provider named in ``spec``, registered if missing (the stack
    outlives a test)."""
    existing = rest.get(f"/v1/providers/{spec['name']}", headers=admin(stack))
    if existing.status_code == 200:
        return str(existing.json()["id"])
    created = rest.post("/v1/providers", headers=admin(stack), json=spec)
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def api_key_provider(rest: httpx.Client, stack: Stack, app: AppServer, name: str) -> str:
    """An API-key provider checked against the app's /api/me."""
    return ensure_provider(
        rest,
        stack,
        {
            "name": name,
            "auth_type": "api_key",
            "api_base_url": app.url,
            "user_info_endpoint": "/api/me",
            "params": {
                "credential_schema": {
                    "fields": [{"name": "api_key", "in": "header", "key": "X-Api-Key"}]
                }
            },
        },
    )


def request_connection(
    rest: httpx.Client,
    stack: Stack,
    provider_id: str,
    return_url: str,
    scopes: tuple[str, ...] = ("openid", "crm:contacts:read"),
) -> httpx.Response:
    # The docs' Step 3, as curl sends it (no Content-Type header of its own).
    return rest.post(
        "/v1/request-connection",
        headers={**admin(stack), "Content-Type": "application/x-www-form-urlencoded"},
        content=json.dumps(
            {
                "workspace_id": "user_sarah",
                "provider_id": provider_id,
                "scopes": list(scopes),
                "return_url": return_url,
            }
        ),
    )


def connect(rest: httpx.Client, stack: Stack, idp: OidcServer, app: AppServer, name: str) -> str:
    provider_id = register_idp(rest, stack, idp, name)
    started = request_connection(rest, stack, provider_id, f"{app.url}/done")
    assert started.status_code == 200, started.text
    body = started.json()
    assert set(body) >= {"auth_url", "state", "connection_id", "scopes", "provider_id"}
    assert body["provider_id"] == provider_id
    assert body["auth_url"] == f"{stack.rest_url}/v1/connect/{body['state']}"
    with httpx.Client(follow_redirects=True, timeout=30) as browser:
        landing = browser.get(body["auth_url"])
    assert parse_qs(urlsplit(str(landing.url)).query)["status"] == ["success"], landing.text
    return str(body["connection_id"])


def test_browser_flow_through_envoy_and_the_documented_token_shape(
    rest: httpx.Client, stack: Stack, idp: OidcServer, app: AppServer
) -> None:
    connection_id = connect(rest, stack, idp, app, "flow-idp")
    checked = rest.get(f"/v1/check-connection/{connection_id}", headers=admin(stack)).json()
    assert checked["status"] == "active"
    reply = rest.get(f"/v1/token/{connection_id}", headers=admin(stack))
    assert reply.status_code == 200
    body = reply.json()
    assert set(body) == {"strategy", "credentials", "expires_at"}
    assert body["strategy"] == {"type": "oauth2"}
    assert set(body["credentials"]) == {"access_token", "expires_at"}
    assert (
        isinstance(body["expires_at"], int)
        and body["credentials"]["expires_at"] == body["expires_at"]
    )
    assert "refresh_token" not in reply.text
    userinfo = httpx.get(
        f"{idp.issuer}/userinfo",
        headers={"Authorization": f"Bearer {body['credentials']['access_token']}"},
    )
    assert userinfo.status_code == 200


def test_bad_connection_input_through_envoy(
    rest: httpx.Client, stack: Stack, idp: OidcServer, app: AppServer
) -> None:
    provider_id = register_idp(rest, stack, idp, "bad-input-idp")
    outside = request_connection(rest, stack, provider_id, "https://evil.example/cb")
    assert outside.status_code == 400
    assert outside.json()["details"][0]["reason"] == "RETURN_URL_NOT_ALLOWED"
    unknown = rest.get("/v1/check-connection/no-such-id", headers=admin(stack))
    assert (
        unknown.status_code == 404
        and unknown.json()["details"][0]["reason"] == "CONNECTION_NOT_FOUND"
    )
    for headers in ({}, {"X-API-Key": "nxa_wrong"}):
        assert rest.get("/v1/token/no-such-id", headers=headers).status_code == 401
    started = request_connection(rest, stack, provider_id, f"{app.url}/done").json()
    tampered = httpx.get(
        f"{stack.rest_url}/v1/callback/bad-input-idp",
        params={"state": started["state"][:-1] + "x", "code": "c"},
    )
    assert tampered.status_code == 400
    checked = rest.get(f"/v1/check-connection/{started['connection_id']}", headers=admin(stack))
    assert checked.json()["status"] == "pending"


def test_api_key_capture_through_envoy(rest: httpx.Client, stack: Stack, app: AppServer) -> None:
    provider_id = api_key_provider(rest, stack, app, "weather-api")
    started = request_connection(rest, stack, provider_id, f"{app.url}/done", scopes=()).json()
    assert started["auth_url"] == f"{stack.rest_url}/v1/connect/{started['state']}"
    violating = rest.post(
        "/v1/capture-credentials",
        headers=admin(stack),
        json={"state": started["state"], "credentials": {"apikey": "x"}},
    )
    assert (
        violating.status_code == 400
        and violating.json()["details"][0]["reason"] == "VALIDATION_FAILED"
    )
    with httpx.Client(follow_redirects=True, timeout=30) as browser:
        page = browser.get(started["auth_url"])
        assert str(page.url) == f"{stack.rest_url}/v1/capture/{started['state']}"
        landing = browser.post(page.url, data={"api_key": GOOD_API_KEY})
    assert parse_qs(urlsplit(str(landing.url)).query)["status"] == ["success"]
    body = rest.get(f"/v1/token/{started['connection_id']}", headers=admin(stack)).json()
    assert body == {
        "strategy": {
            "type": "api_key",
            "fields": [{"name": "api_key", "in": "header", "key": "X-Api-Key"}],
        },
        "credentials": {"api_key": GOOD_API_KEY},
    }


def _second_broker(stack: Stack) -> subprocess.Popen[bytes]:
    port = free_port()
    env = {**os.environ, **stack.env, "NEXUS_BROKER_LISTEN": f"127.0.0.1:{port}"}
    with open(stack.data_dir / "logs" / "broker-2.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "nexus_broker"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def test_two_brokers_refresh_each_due_connection_exactly_once_before_expiry(
    rest: httpx.Client, stack: Stack, idp: OidcServer, app: AppServer
) -> None:
    second = _second_broker(stack)
    try:
        behave(idp, expires_in=12)
        ids = [connect(rest, stack, idp, app, f"loop-idp-{n}") for n in range(4)]
        issued = time.time()
        behave(idp, expires_in=3600)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            refreshed = stats(idp)["token_calls"].get("refresh_token", 0)  # type: ignore[union-attr]
            if refreshed >= len(ids):
                break
            time.sleep(0.25)
        time.sleep(2)  # let a duplicate refresh show itself if there were one
        assert stats(idp)["token_calls"].get("refresh_token", 0) == len(ids)  # type: ignore[union-attr]
        for connection_id in ids:
            checked = rest.get(f"/v1/check-connection/{connection_id}", headers=admin(stack)).json()
            assert checked["status"] == "active" and checked["last_error"] == ""
            token = rest.get(f"/v1/token/{connection_id}", headers=admin(stack)).json()
            assert token["expires_at"] > issued + 3000
        assert time.time() < issued + 12, "the loop refreshed too late"
    finally:
        second.terminate()
        second.wait(timeout=20)
        reap(second)
