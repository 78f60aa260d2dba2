"""Connections the app confirms (RFC 9700 §4.7, the part a browser binding
cannot close): through the real Envoy on PostgreSQL, with the real OAuth server
from npm, and the app (tests/support/app_server.py) confirming only
connections of the user whose session lands at return_url."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.e2e.test_rest_connections import admin, api_key_provider, register_idp
from tests.support.app_server import GOOD_API_KEY, SESSION_COOKIE, AppServer
from tests.support.oidc_server import OidcServer, start_oidc_server, stats
from tools.devstack import Stack

# Long enough for a flow through Envoy and the provider, short enough to wait out.
TTL_SECONDS = 8


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    # One broker, one clock: no room for skew needed before an expiry.
    return {"NEXUS_CONNECTION_TTL_SECONDS": str(TTL_SECONDS), "NEXUS_CLOCK_SKEW_SECONDS": "0"}


@pytest.fixture
def idp() -> Iterator[OidcServer]:
    with start_oidc_server() as server:
        yield server


@pytest.fixture
def confirming_app(app: AppServer, stack: Stack) -> Iterator[AppServer]:
    """The app confirms at Nexus with its admin key, the way a backend would."""

    def confirm(connection_id: str, code: str) -> int:
        reply = httpx.post(
            f"{stack.rest_url}/v1/connections/{connection_id}:confirm",
            headers=admin(stack),
            json={"confirmation": code},
            timeout=30,
        )
        return reply.status_code

    app.confirm = confirm
    try:
        yield app
    finally:
        app.confirm = None


def _browser(app: AppServer, user: str) -> httpx.Client:
    """A browser logged in to the app as ``user``."""
    session = secrets.token_urlsafe(16)
    app.sessions[session] = user
    return httpx.Client(timeout=30, follow_redirects=True, cookies={SESSION_COOKIE: session})


def _request(
    rest: httpx.Client, stack: Stack, app: AppServer, provider_id: str, workspace: str, **extra: Any
) -> dict[str, Any]:
    reply = rest.post(
        "/v1/request-connection",
        headers=admin(stack),
        json={
            "workspace_id": workspace,
            "provider_id": provider_id,
            "return_url": f"{app.url}/done",
            **extra,
        },
    )
    assert reply.status_code == 200, reply.text
    started: dict[str, Any] = reply.json()
    app.workspaces[started["connection_id"]] = workspace
    return started


def _query(url: str | httpx.URL) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(str(url)).query).items()}


def _status(rest: httpx.Client, stack: Stack, connection_id: str) -> dict[str, Any]:
    reply = rest.get(f"/v1/check-connection/{connection_id}", headers=admin(stack))
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def _confirm(rest: httpx.Client, stack: Stack, connection_id: str, code: str) -> httpx.Response:
    return rest.post(
        f"/v1/connections/{connection_id}:confirm",
        headers=admin(stack),
        json={"confirmation": code},
    )


def _reason(reply: httpx.Response) -> str:
    return str(reply.json()["details"][0]["reason"])


def _not_active(rest: httpx.Client, stack: Stack, connection_id: str) -> str:
    """GetToken refuses the connection; the status it names."""
    reply = rest.get(f"/v1/token/{connection_id}", headers=admin(stack))
    assert reply.status_code == 400, reply.text
    detail = reply.json()["details"][0]
    assert detail["reason"] == "CONNECTION_NOT_ACTIVE"
    return str(detail["metadata"]["status"])


def _audit_actions(rest: httpx.Client, stack: Stack, connection_id: str) -> list[str]:
    reply = rest.get(
        "/v1/audit-events",
        headers=admin(stack),
        params={"resource": f"connections/{connection_id}"},
    )
    assert reply.status_code == 200, reply.text
    return [event["action"] for event in reply.json().get("audit_events", [])]


def test_a_forwarded_unopened_auth_url_never_lands_in_the_senders_workspace(
    rest: httpx.Client, stack: Stack, idp: OidcServer, confirming_app: AppServer
) -> None:
    """User A asks for a connection and forwards the unopened auth_url to a
    victim, whose browser completes it at the provider. The victim lands at
    the app with the code; the app sees a session that does not own A's
    workspace and does not confirm. A's connection never becomes usable, and
    once its time is up its tokens are revoked at the provider and forgotten."""
    app = confirming_app
    provider_id = register_idp(rest, stack, idp, "confirm-injection")
    started = _request(rest, stack, app, provider_id, "user_a", require_confirmation=True)
    assert started["confirmation_required"] is True
    connection_id = started["connection_id"]
    with _browser(app, "victim") as victim:
        landing = victim.get(started["auth_url"])
    assert landing.url.path == "/done" and landing.status_code == 403
    outcome = _query(landing.url)
    assert outcome["status"] == "success" and outcome["connection_id"] == connection_id
    assert len(outcome["confirmation"]) == 43
    assert app.confirmations[-1] == (connection_id, "refused")
    assert stats(idp)["token_calls"] == {"authorization_code": 1}  # the victim's account

    assert _status(rest, stack, connection_id)["status"] == "unconfirmed"
    assert _not_active(rest, stack, connection_id) == "unconfirmed"
    refresh = rest.post(f"/v1/refresh/{connection_id}", headers=admin(stack))
    assert refresh.status_code == 400 and _reason(refresh) == "CONNECTION_NOT_ACTIVE"

    # Nobody confirms: the connection expires and its tokens are revoked at the provider.
    deadline = time.monotonic() + TTL_SECONDS + 15
    while _status(rest, stack, connection_id)["status"] != "expired":
        assert time.monotonic() < deadline, "the unconfirmed connection never expired"
        time.sleep(0.5)
    while "connection.expire" not in _audit_actions(rest, stack, connection_id):
        assert time.monotonic() < deadline, "the expired connection's tokens were never revoked"
        time.sleep(0.5)
    assert len(stats(idp)["revoked"]) == 2  # type: ignore[arg-type]  # refresh and access token
    assert _not_active(rest, stack, connection_id) == "expired"
    # The code is worth nothing now, even to the app.
    late = _confirm(rest, stack, connection_id, outcome["confirmation"])
    assert late.status_code == 400 and _reason(late) == "CONFIRMATION_INVALID"
    assert _status(rest, stack, connection_id)["status"] == "expired"


def test_the_app_confirms_its_own_users_connection_once(
    rest: httpx.Client, stack: Stack, idp: OidcServer, confirming_app: AppServer
) -> None:
    app = confirming_app
    provider_id = register_idp(rest, stack, idp, "confirm-honest")
    started = _request(rest, stack, app, provider_id, "user_a", require_confirmation=True)
    connection_id = started["connection_id"]
    with _browser(app, "user_a") as browser:
        landing = browser.get(started["auth_url"])
    assert landing.status_code == 200, landing.text
    assert app.confirmations[-1] == (connection_id, "confirmed")
    checked = _status(rest, stack, connection_id)
    assert checked["status"] == "active"
    assert "expire_time" not in checked
    token = rest.get(f"/v1/token/{connection_id}", headers=admin(stack))
    assert token.status_code == 200, token.text
    access_token = token.json()["credentials"]["access_token"]
    userinfo = httpx.get(
        f"{idp.issuer}/userinfo", headers={"Authorization": f"Bearer {access_token}"}
    )
    assert userinfo.status_code == 200
    actions = _audit_actions(rest, stack, connection_id)
    assert {"connection.complete", "connection.confirm"} <= set(actions)
    assert "connection.activate" not in actions

    # The same code again: refused, and the connection stays as it is.
    again = _confirm(rest, stack, connection_id, _query(landing.url)["confirmation"])
    assert again.status_code == 400 and _reason(again) == "CONFIRMATION_INVALID"
    assert rest.get(f"/v1/token/{connection_id}", headers=admin(stack)).status_code == 200


def test_wrong_codes_change_nothing(
    rest: httpx.Client, stack: Stack, idp: OidcServer, app: AppServer
) -> None:
    provider_id = register_idp(rest, stack, idp, "confirm-wrong")
    started = _request(rest, stack, app, provider_id, "user_a", require_confirmation=True)
    connection_id = started["connection_id"]
    with _browser(app, "user_a") as browser:
        landing = browser.get(started["auth_url"])
    code = _query(landing.url)["confirmation"]
    for wrong in (secrets.token_urlsafe(32), code[:-1], code + "A", "", "x" * 5000):
        reply = _confirm(rest, stack, connection_id, wrong)
        assert reply.status_code == 400, reply.text
        assert _reason(reply) == "CONFIRMATION_INVALID"
        assert code not in reply.text
    assert _status(rest, stack, connection_id)["status"] == "unconfirmed"
    assert _not_active(rest, stack, connection_id) == "unconfirmed"
    # Another connection's code does not confirm this one either.
    other = _request(rest, stack, app, provider_id, "user_b", require_confirmation=True)
    with _browser(app, "user_b") as browser:
        other_code = _query(browser.get(other["auth_url"]).url)["confirmation"]
    assert _reason(_confirm(rest, stack, connection_id, other_code)) == "CONFIRMATION_INVALID"
    body_mismatch = rest.post(
        f"/v1/connections/{connection_id}:confirm",
        headers=admin(stack),
        json={"connection_id": other["connection_id"], "confirmation": code},
    )
    assert body_mismatch.status_code == 400 and _reason(body_mismatch) == "VALIDATION_FAILED"
    unknown_field = rest.post(
        f"/v1/connections/{connection_id}:confirm",
        headers=admin(stack),
        json={"confirmation": code, "bogus": 1},
    )
    assert unknown_field.status_code == 400 and _reason(unknown_field) == "UNKNOWN_FIELD"
    no_key = httpx.post(
        f"{stack.rest_url}/v1/connections/{connection_id}:confirm", json={"confirmation": code}
    )
    assert no_key.status_code == 401
    missing = _confirm(rest, stack, "no-such-connection", code)
    assert missing.status_code == 404 and _reason(missing) == "CONNECTION_NOT_FOUND"
    assert _status(rest, stack, connection_id)["status"] == "unconfirmed"

    confirmed = _confirm(rest, stack, connection_id, code)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "active"


def test_an_unconfirmed_code_expires_with_the_connection(
    rest: httpx.Client, stack: Stack, idp: OidcServer, app: AppServer
) -> None:
    provider_id = register_idp(rest, stack, idp, "confirm-late")
    started = _request(rest, stack, app, provider_id, "user_a", require_confirmation=True)
    with _browser(app, "user_a") as browser:
        code = _query(browser.get(started["auth_url"]).url)["confirmation"]
    checked = _status(rest, stack, started["connection_id"])
    assert checked["status"] == "unconfirmed" and "expire_time" in checked
    time.sleep(TTL_SECONDS + 0.5)
    late = _confirm(rest, stack, started["connection_id"], code)
    assert late.status_code == 400 and _reason(late) == "CONFIRMATION_INVALID"
    assert _status(rest, stack, started["connection_id"])["status"] == "expired"
    assert _not_active(rest, stack, started["connection_id"]) == "expired"


def test_a_connection_without_confirmation_works_as_before(
    rest: httpx.Client, stack: Stack, idp: OidcServer, confirming_app: AppServer
) -> None:
    app = confirming_app
    provider_id = register_idp(rest, stack, idp, "confirm-none")
    started = _request(rest, stack, app, provider_id, "user_a")
    assert started["confirmation_required"] is False
    confirmations = len(app.confirmations)
    with _browser(app, "someone") as browser:
        landing = browser.get(started["auth_url"])
    assert _query(landing.url) == {"status": "success", "connection_id": started["connection_id"]}
    assert len(app.confirmations) == confirmations
    assert _status(rest, stack, started["connection_id"])["status"] == "active"
    assert rest.get(f"/v1/token/{started['connection_id']}", headers=admin(stack)).is_success
    needless = _confirm(rest, stack, started["connection_id"], secrets.token_urlsafe(32))
    assert needless.status_code == 400 and _reason(needless) == "CONFIRMATION_INVALID"


@pytest.fixture
def weather(rest: httpx.Client, stack: Stack, app: AppServer) -> str:
    return api_key_provider(rest, stack, app, "confirm-weather")


@pytest.mark.parametrize("user", ["user_a", "victim"])
def test_the_capture_page_leaves_the_connection_to_the_apps_confirmation(
    rest: httpx.Client, stack: Stack, confirming_app: AppServer, weather: str, user: str
) -> None:
    app = confirming_app
    started = _request(rest, stack, app, weather, "user_a", require_confirmation=True)
    connection_id = started["connection_id"]
    with _browser(app, user) as browser:
        page = browser.get(started["auth_url"])
        assert page.url.path == f"/v1/capture/{started['state']}"
        landing = browser.post(page.url, data={"api_key": GOOD_API_KEY})
    outcome = _query(landing.url)
    assert outcome["status"] == "success" and outcome["confirmation"]
    if user == "victim":
        assert app.confirmations[-1] == (connection_id, "refused")
        assert _status(rest, stack, connection_id)["status"] == "unconfirmed"
        assert _not_active(rest, stack, connection_id) == "unconfirmed"
        # The app forgets what it did not confirm.
        assert rest.delete(f"/v1/connections/{connection_id}", headers=admin(stack)).is_success
        assert _confirm(rest, stack, connection_id, outcome["confirmation"]).status_code == 404
        return
    assert app.confirmations[-1] == (connection_id, "confirmed")
    token = rest.get(f"/v1/token/{connection_id}", headers=admin(stack))
    assert token.status_code == 200 and token.json()["credentials"] == {"api_key": GOOD_API_KEY}


def test_the_backends_own_capture_needs_no_confirmation(
    rest: httpx.Client, stack: Stack, app: AppServer, weather: str
) -> None:
    """The backend that asked for the connection completes it itself: no
    browser took part, so there is nothing to confirm."""
    started = _request(rest, stack, app, weather, "user_a", require_confirmation=True)
    captured = rest.post(
        "/v1/capture-credentials",
        headers=admin(stack),
        json={"state": started["state"], "credentials": {"api_key": GOOD_API_KEY}},
    )
    assert captured.status_code == 200, captured.text
    assert captured.json()["status"] == "active"
    assert "confirmation" not in captured.json()["redirect_url"]
    assert rest.get(f"/v1/token/{started['connection_id']}", headers=admin(stack)).is_success
