"""The callback and the capture page under attack, through the real Envoy on
PostgreSQL, driven the way browsers drive them (httpx clients with their own
cookie jars): mix-up (RFC 9700 §4.4), connection injection (§4.7), the capture
page as a credential oracle, hostile form input, and machine-readable errors."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from tests.e2e.test_rest_connections import (
    admin,
    api_key_provider,
    ensure_provider,
    register_idp,
    request_connection,
)
from tests.support.app_server import GOOD_API_KEY, AppServer
from tests.support.browser import follow_until
from tests.support.certified_oidc import CertifiedOidc, certified_stats, start_certified_oidc
from tests.support.oidc_server import OidcServer, start_oidc_server, stats
from tools.devstack import Stack

CERTIFIED = "certified-crm"
CAPTURE_CHECK_LIMIT = 5


@pytest.fixture
def idp() -> Iterator[OidcServer]:
    with start_oidc_server() as server:
        yield server


@pytest.fixture(scope="module")
def certified(stack: Stack) -> Iterator[CertifiedOidc]:
    with start_certified_oidc([f"{stack.rest_url}/v1/callback/{CERTIFIED}"]) as server:
        yield server


def _reason(reply: httpx.Response) -> str:
    """The ErrorInfo reason of an HTML error page."""
    found = re.search(r'data-reason="([A-Z_]+)"', reply.text)
    assert found, reply.text
    return found.group(1)


def _outcome(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def _status(rest: httpx.Client, stack: Stack, connection_id: str) -> dict[str, Any]:
    reply = rest.get(f"/v1/check-connection/{connection_id}", headers=admin(stack))
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def _start(rest: httpx.Client, stack: Stack, provider_id: str, app: AppServer, **kw: Any) -> Any:
    started = request_connection(rest, stack, provider_id, f"{app.url}/done", **kw)
    assert started.status_code == 200, started.text
    return started.json()


def _to_callback(browser: httpx.Client, auth_url: str, stack: Stack) -> str:
    """Walk from auth_url through the provider up to (not into) Nexus' callback."""
    reply = follow_until(browser, auth_url, f"{stack.rest_url}/v1/callback/")
    assert reply.is_redirect, reply.text
    return str(reply.headers["location"])


def _with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


def _code_exchanges(idp: OidcServer) -> int:
    return int(stats(idp)["token_calls"].get("authorization_code", 0))  # type: ignore[attr-defined]


# --- connection injection ---------------------------------------------------------------------


def test_a_second_browser_cannot_finish_someone_elses_auth_url(
    rest: httpx.Client, stack: Stack, idp: OidcServer, app: AppServer
) -> None:
    """The attacker starts a connection for their own workspace, opens auth_url
    (which binds it to their browser) and hands the provider's URL to a victim:
    the victim's account must never land in the attacker's workspace."""
    provider_id = register_idp(rest, stack, idp, "injection-idp")
    started = _start(rest, stack, provider_id, app)
    with httpx.Client(timeout=30) as attacker, httpx.Client(timeout=30) as victim:
        to_provider = attacker.get(started["auth_url"])
        assert to_provider.status_code == 302
        assert to_provider.headers["location"].startswith(f"{idp.issuer}/authorize?")
        assert "httponly" in to_provider.headers["set-cookie"].lower()
        assert "samesite=lax" in to_provider.headers["set-cookie"].lower()

        # The victim authorizes at the provider and comes back without the cookie.
        callback = _to_callback(victim, to_provider.headers["location"], stack)
        refused = victim.get(callback)
        assert refused.status_code == 403 and _reason(refused) == "BROWSER_MISMATCH"
        # Nor may the victim open the attacker's auth_url itself.
        reopened = victim.get(started["auth_url"])
        assert reopened.status_code == 403 and _reason(reopened) == "BROWSER_MISMATCH"

    assert _code_exchanges(idp) == 0
    assert _status(rest, stack, started["connection_id"])["status"] == "pending"
    token = rest.get(f"/v1/token/{started['connection_id']}", headers=admin(stack))
    assert token.status_code == 400
    assert token.json()["details"][0]["reason"] == "CONNECTION_NOT_ACTIVE"


def test_the_browser_that_opened_auth_url_finishes_it_even_after_reopening_it(
    rest: httpx.Client, stack: Stack, idp: OidcServer, app: AppServer
) -> None:
    provider_id = register_idp(rest, stack, idp, "rebind-idp")
    started = _start(rest, stack, provider_id, app)
    with httpx.Client(timeout=30, follow_redirects=True) as browser:
        assert browser.get(started["auth_url"], follow_redirects=False).status_code == 302
        landing = browser.get(started["auth_url"])
    assert _outcome(str(landing.url))["status"] == ["success"]
    assert _status(rest, stack, started["connection_id"])["status"] == "active"


# --- mix-up -----------------------------------------------------------------------------------


def test_a_code_at_another_providers_callback_is_refused(
    rest: httpx.Client, stack: Stack, idp: OidcServer, app: AppServer
) -> None:
    honest = register_idp(rest, stack, idp, "mixup-honest")
    register_idp(rest, stack, idp, "mixup-other")
    started = _start(rest, stack, honest, app)
    with httpx.Client(timeout=30) as browser:
        callback = _to_callback(browser, started["auth_url"], stack)
        assert urlsplit(callback).path == "/v1/callback/mixup-honest"
        elsewhere = callback.replace("/v1/callback/mixup-honest", "/v1/callback/mixup-other")
        refused = browser.get(elsewhere)
        assert refused.status_code == 302
        assert refused.headers["location"].startswith(f"{app.url}/done?")
        outcome = _outcome(refused.headers["location"])
        assert outcome["status"] == ["error"]
        assert outcome["error"] == ["CALLBACK_PROVIDER_MISMATCH"]
        # The state is spent: the genuine callback cannot follow with the same code.
        assert browser.get(callback).status_code == 400
    assert _code_exchanges(idp) == 0
    checked = _status(rest, stack, started["connection_id"])
    assert checked["status"] == "failed" and checked["last_error"] == "CALLBACK_PROVIDER_MISMATCH"


def _register_certified(rest: httpx.Client, stack: Stack, certified: CertifiedOidc) -> str:
    return ensure_provider(
        rest,
        stack,
        {
            "name": CERTIFIED,
            "auth_type": "oauth2",
            "client_id": certified.client_id,
            "client_secret": certified.client_secret,
            "issuer": certified.issuer,
            "enable_discovery": True,
            "scopes": ["openid", "crm:contacts:read"],
        },
    )


@pytest.mark.parametrize("iss", ["wrong", "missing"])
def test_an_authorization_response_without_the_providers_iss_is_refused(
    rest: httpx.Client, stack: Stack, certified: CertifiedOidc, app: AppServer, iss: str
) -> None:
    discovery = httpx.get(certified.discovery_url).json()
    assert discovery["authorization_response_iss_parameter_supported"] is True
    provider_id = _register_certified(rest, stack, certified)
    started = _start(rest, stack, provider_id, app, scopes=("openid", "crm:contacts:read"))
    exchanges = certified_stats(certified)["token_calls"].get("authorization_code", 0)
    with httpx.Client(timeout=30) as browser:
        callback = _to_callback(browser, started["auth_url"], stack)
        assert _outcome(callback)["iss"] == [certified.issuer]
        forged = _with_query(callback, iss="https://attacker.example" if iss == "wrong" else None)
        refused = browser.get(forged)
    assert refused.status_code == 302
    outcome = _outcome(refused.headers["location"])
    assert outcome["status"] == ["error"] and outcome["error"] == ["ISSUER_MISMATCH"]
    assert certified_stats(certified)["token_calls"].get("authorization_code", 0) == exchanges
    assert _status(rest, stack, started["connection_id"])["status"] == "failed"


def test_the_providers_own_iss_completes_the_connection(
    rest: httpx.Client, stack: Stack, certified: CertifiedOidc, app: AppServer
) -> None:
    provider_id = _register_certified(rest, stack, certified)
    started = _start(rest, stack, provider_id, app, scopes=("openid", "crm:contacts:read"))
    with httpx.Client(timeout=30, follow_redirects=True) as browser:
        landing = browser.get(started["auth_url"])
    assert _outcome(str(landing.url))["status"] == ["success"], landing.url
    assert _status(rest, stack, started["connection_id"])["status"] == "active"


def test_a_provider_param_requires_iss_from_a_provider_without_discovery(
    rest: httpx.Client, stack: Stack, idp: OidcServer, app: AppServer
) -> None:
    """The mock provider sends no iss; a provider marked as sending it is refused."""
    created = rest.post(
        "/v1/providers",
        headers=admin(stack),
        json={
            "name": "iss-by-param",
            "auth_type": "oauth2",
            "client_id": "nexus-client",
            "client_secret": "s3cret",
            "issuer": idp.issuer,
            "auth_url": f"{idp.issuer}/authorize",
            "token_url": f"{idp.issuer}/token",
            "scopes": ["crm:contacts:read"],
            "params": {"authorization_response_iss_parameter_supported": True},
        },
    )
    assert created.status_code == 200, created.text
    started = _start(rest, stack, created.json()["id"], app, scopes=("crm:contacts:read",))
    with httpx.Client(timeout=30, follow_redirects=True) as browser:
        landing = browser.get(started["auth_url"])
    assert _outcome(str(landing.url))["error"] == ["ISSUER_MISMATCH"]
    assert _code_exchanges(idp) == 0


# --- the capture page -------------------------------------------------------------------------


@pytest.fixture
def weather(rest: httpx.Client, stack: Stack, app: AppServer) -> str:
    return api_key_provider(rest, stack, app, "weather-checks")


def _open_capture(browser: httpx.Client, started: dict[str, Any], stack: Stack) -> str:
    page = browser.get(started["auth_url"], follow_redirects=True)
    assert page.status_code == 200, page.text
    assert str(page.url) == f"{stack.rest_url}/v1/capture/{started['state']}"
    return str(page.url)


def test_the_capture_page_allows_a_few_checks_then_spends_the_state(
    rest: httpx.Client, stack: Stack, app: AppServer, weather: str
) -> None:
    started = _start(rest, stack, weather, app, scopes=())
    calls = app.me_calls
    with httpx.Client(timeout=30) as browser:
        capture_url = _open_capture(browser, started, stack)
        page = browser.get(capture_url)
        csp = page.headers["content-security-policy"]
        assert f"form-action 'self' {app.url};" in csp and "default-src 'none'" in csp
        for _ in range(CAPTURE_CHECK_LIMIT - 1):
            rejected = browser.post(capture_url, data={"api_key": "guess"})
            assert rejected.status_code == 400 and _reason(rejected) == "CREDENTIALS_REJECTED"
            assert rejected.headers["content-security-policy"] == csp
        last = browser.post(capture_url, data={"api_key": "guess"})
        assert last.status_code == 303
        outcome = _outcome(last.headers["location"])
        assert outcome["status"] == ["error"]
        assert outcome["error"] == ["CAPTURE_ATTEMPTS_EXHAUSTED"]
        spent = browser.post(capture_url, data={"api_key": GOOD_API_KEY})
        assert spent.status_code == 400 and _reason(spent) == "STATE_INVALID"
    assert app.me_calls - calls == CAPTURE_CHECK_LIMIT
    checked = _status(rest, stack, started["connection_id"])
    assert checked["status"] == "failed" and checked["last_error"] == "CAPTURE_ATTEMPTS_EXHAUSTED"


def test_concurrent_backend_captures_get_no_more_checks_than_the_limit(
    rest: httpx.Client, stack: Stack, app: AppServer, weather: str
) -> None:
    started = _start(rest, stack, weather, app, scopes=())
    calls = app.me_calls

    def capture(_: int) -> httpx.Response:
        return rest.post(
            "/v1/capture-credentials",
            headers=admin(stack),
            json={"state": started["state"], "credentials": {"api_key": "guess"}},
        )

    with ThreadPoolExecutor(max_workers=12) as pool:
        replies = list(pool.map(capture, range(12)))
    assert {r.status_code for r in replies} == {400}
    reasons = [r.json()["details"][0]["reason"] for r in replies]
    assert set(reasons) <= {"CREDENTIALS_REJECTED", "CAPTURE_ATTEMPTS_EXHAUSTED", "STATE_INVALID"}
    assert reasons.count("CREDENTIALS_REJECTED") == CAPTURE_CHECK_LIMIT - 1
    assert "CAPTURE_ATTEMPTS_EXHAUSTED" in reasons
    assert app.me_calls - calls == CAPTURE_CHECK_LIMIT
    assert _status(rest, stack, started["connection_id"])["status"] == "failed"


@pytest.mark.parametrize(
    "body",
    [
        urlencode({"api_key": "ключ-ñ"}).encode(),  # UTF-8, but not sendable in a header
        b"api_key=\xff\xfe",  # not UTF-8 at all
        urlencode({"api_key": "good\r\nX-Injected: 1"}).encode(),
    ],
    ids=["non-ascii", "not-utf8", "crlf"],
)
def test_hostile_form_values_get_a_4xx_with_a_reason_and_spend_nothing(
    rest: httpx.Client, stack: Stack, app: AppServer, weather: str, body: bytes
) -> None:
    started = _start(rest, stack, weather, app, scopes=())
    calls = app.me_calls
    with httpx.Client(timeout=30) as browser:
        capture_url = _open_capture(browser, started, stack)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        refused = browser.post(capture_url, content=body, headers=form)
        assert refused.status_code == 400, refused.text
        assert _reason(refused) == "VALIDATION_FAILED"
        as_json = browser.post(
            capture_url, content=body, headers={**form, "Accept": "application/json"}
        )
        assert as_json.status_code == 400
        assert as_json.json()["details"][0]["reason"] == "VALIDATION_FAILED"
        assert app.me_calls == calls
        landing = browser.post(capture_url, data={"api_key": GOOD_API_KEY})
    assert _outcome(landing.headers["location"])["status"] == ["success"]


def test_a_non_ascii_key_through_the_json_api_gets_a_4xx(
    rest: httpx.Client, stack: Stack, app: AppServer, weather: str
) -> None:
    started = _start(rest, stack, weather, app, scopes=())
    reply = rest.post(
        "/v1/capture-credentials",
        headers=admin(stack),
        json={"state": started["state"], "credentials": {"api_key": "schlüssel"}},
    )
    assert reply.status_code == 400, reply.text
    detail = reply.json()["details"][0]
    assert detail["reason"] == "VALIDATION_FAILED" and detail["metadata"]["field"] == "api_key"
    assert "schlüssel" not in reply.text


def test_the_capture_page_is_only_for_the_browser_that_opened_auth_url(
    rest: httpx.Client, stack: Stack, app: AppServer, weather: str
) -> None:
    started = _start(rest, stack, weather, app, scopes=())
    capture_url = f"{stack.rest_url}/v1/capture/{started['state']}"
    with httpx.Client(timeout=30) as owner, httpx.Client(timeout=30) as other:
        _open_capture(owner, started, stack)
        for reply in (
            other.get(capture_url),
            other.post(capture_url, data={"api_key": GOOD_API_KEY}),
        ):
            assert reply.status_code == 403 and _reason(reply) == "BROWSER_MISMATCH"
    assert _status(rest, stack, started["connection_id"])["status"] == "pending"


# --- machine-readable errors ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/connect/{state}", "/v1/callback/x?state={state}"])
def test_browser_errors_carry_the_reason_as_html_and_json(
    rest: httpx.Client, stack: Stack, path: str
) -> None:
    url = stack.rest_url + path.format(state="not-a-state")
    page = httpx.get(url, headers={"Accept": "text/html"})
    assert page.status_code == 400 and "text/html" in page.headers["content-type"]
    assert _reason(page) == "STATE_INVALID"
    as_json = httpx.get(url, headers={"Accept": "application/json"})
    assert as_json.status_code == 400
    body = as_json.json()
    assert body["code"] == 3 and body["message"]
    assert body["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "STATE_INVALID",
            "domain": "nexus.dev",
            "metadata": {},
        }
    ]
