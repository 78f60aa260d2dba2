"""Connection injection with an unopened link, in production's defaults
(NEXUS_ENVIRONMENT=production, NEXUS_CONNECTION_CONFIRMATION unset), through
the real Envoy on PostgreSQL, with the real OAuth server from npm, which skips
consent as many providers do for a client the user already authorized.

The attacker, a user of the app, has the app ask Nexus for a connection to
their own workspace and forwards the unopened ``auth_url`` to a victim. The
victim's own browser, headless Chromium signed in to the app as the victim,
opens it first and completes it at the provider."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.test_confirmation import confirming_app
from tests.e2e.test_rest_connections import admin, register_idp
from tests.support.app_server import SESSION_COOKIE, AppServer
from tests.support.oidc_server import OidcServer, start_oidc_server, stats
from tools.devstack import Stack

__all__ = ["confirming_app"]  # the app confirming its own users' connections


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return {"NEXUS_ENVIRONMENT": "production"}


@pytest.fixture
def idp() -> Iterator[OidcServer]:
    with start_oidc_server() as server:
        yield server


def _sign_in(browser: webdriver.Chrome, app: AppServer, user: str) -> None:
    """The browser holds the app's session cookie of ``user``."""
    session = secrets.token_urlsafe(16)
    app.sessions[session] = user
    browser.get(f"{app.url}/signed-in")
    browser.add_cookie({"name": SESSION_COOKIE, "value": session, "path": "/"})


def _start(rest: httpx.Client, stack: Stack, app: AppServer, provider_id: str, **extra: Any) -> Any:
    return rest.post(
        "/v1/request-connection",
        headers=admin(stack),
        json={
            "workspace_id": "attacker",
            "provider_id": provider_id,
            "return_url": f"{app.url}/done",
            **extra,
        },
    )


def test_an_unopened_auth_url_opened_by_another_browser_never_becomes_usable(
    rest: httpx.Client,
    stack: Stack,
    idp: OidcServer,
    confirming_app: AppServer,
    chromium: webdriver.Chrome,
) -> None:
    app = confirming_app
    provider_id = register_idp(rest, stack, idp, "injection-in-production")
    reply = _start(rest, stack, app, provider_id)
    assert reply.status_code == 200, reply.text
    started = reply.json()
    assert started["confirmation_required"] is True  # production's default; nobody asked
    connection_id = started["connection_id"]
    app.workspaces[connection_id] = "attacker"

    _sign_in(chromium, app, "victim")
    chromium.get(started["auth_url"])
    WebDriverWait(chromium, 20).until(lambda b: b.current_url.startswith(f"{app.url}/done"))
    outcome = {k: v[0] for k, v in parse_qs(urlsplit(chromium.current_url).query).items()}
    assert outcome["status"] == "success" and outcome["connection_id"] == connection_id
    assert stats(idp)["token_calls"] == {"authorization_code": 1}  # the victim's account
    # The app saw the victim's session, not the attacker's, and did not confirm.
    assert app.confirmations[-1] == (connection_id, "refused")
    assert "not yours" in chromium.page_source

    checked = rest.get(f"/v1/check-connection/{connection_id}", headers=admin(stack))
    assert checked.json()["status"] == "unconfirmed"
    token = rest.get(f"/v1/token/{connection_id}", headers=admin(stack))
    assert token.status_code == 400
    assert token.json()["details"][0]["reason"] == "CONNECTION_NOT_ACTIVE"


def test_production_refuses_a_request_to_skip_confirmation(
    rest: httpx.Client, stack: Stack, idp: OidcServer, app: AppServer
) -> None:
    provider_id = register_idp(rest, stack, idp, "skip-in-production")
    refused = _start(rest, stack, app, provider_id, require_confirmation=False)
    assert refused.status_code == 400, refused.text
    detail = refused.json()["details"][0]
    assert detail["reason"] == "CONFIRMATION_REQUIRED"
    assert "NEXUS_CONNECTION_CONFIRMATION" in refused.json()["message"]
