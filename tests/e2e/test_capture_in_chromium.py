"""The hosted capture page in a real browser: headless Chromium, driven by
Selenium, through the real Envoy, back to an app served on loopback.

Chromium applies the page's CSP form-action to the redirect that follows the
submit, so this is the test that shows the user really lands back in the app.
The ``chromium`` fixture is in tests/e2e/conftest.py."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.test_rest_connections import admin, api_key_provider, request_connection
from tests.support.app_server import GOOD_API_KEY, AppServer
from tools.devstack import Stack


def test_submitting_the_capture_page_lands_on_the_return_url(
    rest: httpx.Client, stack: Stack, app: AppServer, chromium: webdriver.Chrome
) -> None:
    provider_id = api_key_provider(rest, stack, app, "weather-in-chromium")
    started = request_connection(rest, stack, provider_id, f"{app.url}/done", scopes=())
    assert started.status_code == 200, started.text
    body = started.json()

    chromium.get(body["auth_url"])
    assert chromium.current_url == f"{stack.rest_url}/v1/capture/{body['state']}"
    chromium.find_element(By.ID, "api_key").send_keys(GOOD_API_KEY)
    chromium.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(chromium, 20).until(lambda b: b.current_url.startswith(f"{app.url}/done"))

    outcome = parse_qs(urlsplit(chromium.current_url).query)
    assert outcome == {"status": ["success"], "connection_id": [body["connection_id"]]}
    assert "connected" in chromium.page_source
    assert any(body["connection_id"] in landing for landing in app.landings)
    token = rest.get(f"/v1/token/{body['connection_id']}", headers=admin(stack)).json()
    assert token["credentials"] == {"api_key": GOOD_API_KEY}
