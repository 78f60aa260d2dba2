"""The TypeScript SDK (sdk/typescript) through the real stack: Envoy, the three
services on PostgreSQL, the real OAuth server from npm, a real customer backend
behind BACKEND_AUTH_URL and a real provider API (the app server).

The SDK and its node:test tests are compiled here with the package's own
``tsc --strict`` (so a stale build cannot pass), then each test file runs under
``node --test`` with the stack's addresses and keys in its environment. Each
file must report exactly the number of passing tests listed below: a file that
silently ran fewer, skipped some or was not found fails."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.agent_guide import Guide
from tests.support.app_server import GOOD_API_KEY, GOOD_BASIC, AppServer
from tests.support.backend_auth_server import BackendAuthServer
from tests.support.oidc_server import OidcServer
from tools.devstack import ROOT, Stack

SDK = ROOT / "sdk" / "typescript"
TSC = SDK / "node_modules" / ".bin" / "tsc"
COMPILED_TESTS = SDK / "dist-test"
# How many tests each file holds; keep in step with sdk/typescript/test/*.test.ts.
EXPECTED = {
    "api.test.js": 3,
    "connections.test.js": 8,
    "docs.test.js": 2,
    "errors.test.js": 18,
    "sessions.test.js": 10,
}
SUMMARY = re.compile(r"^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$", re.MULTILINE)


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, **kwargs
    )


@functools.cache
def compile_sdk_and_tests() -> Path:
    """The SDK built into dist/ and its tests into dist-test/, afresh once per test run."""
    if not TSC.exists():
        pytest.fail(f"{TSC} is missing: run `make install` (npm ci --prefix sdk/typescript)")
    for stale in COMPILED_TESTS.glob("*.js"):
        stale.unlink()
    for project in (SDK, SDK / "test"):
        built = run([str(TSC), "-p", str(project)])
        assert built.returncode == 0, f"tsc -p {project} failed:\n{built.stdout}{built.stderr}"
    return COMPILED_TESTS


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def captured_connection(
    rest: httpx.Client, app: AppServer, provider: dict[str, Any], credentials: dict[str, str]
) -> str:
    """A static-credential connection: the provider registered, and the user's
    credentials captured through the JSON API (the broker checks them against
    the app server's /api/me first)."""
    provider_id = ok(rest.post("/v1/providers", json=provider))["id"]
    started = ok(
        rest.post(
            "/v1/request-connection",
            json={
                "workspace_id": "user_sarah",
                "provider_id": provider_id,
                "scopes": [],
                "return_url": f"{app.url}/done",
            },
        )
    )
    done = ok(
        rest.post(
            "/v1/capture-credentials",
            json={"state": started["state"], "credentials": credentials},
        )
    )
    assert done["status"] == "active", done
    return str(started["connection_id"])


def node_environment(
    stack: Stack, guide: Guide, idp: OidcServer, backend: BackendAuthServer, app: AppServer
) -> dict[str, str]:
    """What the node tests read (see sdk/typescript/test/support.ts)."""
    with httpx.Client(
        base_url=stack.rest_url, headers={"X-API-Key": stack.admin_key}, timeout=30
    ) as rest:
        me = {"api_base_url": app.url, "user_info_endpoint": "/api/me"}
        api_key_connection = captured_connection(
            rest,
            app,
            {
                "name": "weather-api",
                "auth_type": "api_key",
                **me,
                "params": {
                    "credential_schema": {
                        "fields": [{"name": "api_key", "in": "header", "key": "X-Api-Key"}]
                    }
                },
            },
            {"api_key": GOOD_API_KEY},
        )
        basic_connection = captured_connection(
            rest,
            app,
            {"name": "legacy-crm", "auth_type": "basic_auth", **me},
            dict(zip(("username", "password"), GOOD_BASIC, strict=True)),
        )
    # Keys the SDK would read by itself are left out: each test sets its own.
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name not in ("NEXUS_AGENT_KEY", "NEXUS_API_KEY")
    }
    return {
        **inherited,
        "NEXUS_TS_GATEWAY_URL": stack.rest_url,
        "NEXUS_TS_ADMIN_KEY": stack.admin_key,
        "NEXUS_TS_CRM_KEY": guide.crm_key,
        "NEXUS_TS_OPS_KEY": guide.ops_key,
        "NEXUS_TS_CONNECTION_ID": guide.connection_id,
        "NEXUS_TS_API_KEY_CONNECTION_ID": api_key_connection,
        "NEXUS_TS_BASIC_CONNECTION_ID": basic_connection,
        "NEXUS_TS_APP_URL": app.url,
        "NEXUS_TS_IDP_ISSUER": idp.issuer,
        "NEXUS_TS_PERMITTED_USER_TOKEN": backend.issue_token(
            "sarah",
            permissions=["acme:gliding", "acme:treasury"],
            tenant_id="acme-eu",
            clearance_level="secret",
            workspaces=["user_sarah"],
        ),
        "NEXUS_TS_UNPERMITTED_USER_TOKEN": backend.issue_token("bob", permissions=["acme:flaring"]),
    }


def passes_every_test(name: str, compiled_tests: Path, node_env: dict[str, str]) -> None:
    """Runs one compiled test file under node --test: it must pass exactly its EXPECTED tests."""
    result = run(
        ["node", "--test", "--test-reporter=tap", str(compiled_tests / name)],
        cwd=SDK,
        env=node_env,
    )
    output = result.stdout + result.stderr
    counts = {key: int(value) for key, value in SUMMARY.findall(result.stdout)}
    expected = EXPECTED[name]
    assert result.returncode == 0, output
    assert counts == {
        "tests": expected,
        "pass": expected,
        "fail": 0,
        "cancelled": 0,
        "skipped": 0,
        "todo": 0,
    }, output


@pytest.fixture(scope="module")
def compiled_tests() -> Path:
    return compile_sdk_and_tests()


@pytest.fixture(scope="module")
def node_env(
    stack: Stack, guide: Guide, idp: OidcServer, backend: BackendAuthServer, app: AppServer
) -> dict[str, str]:
    return node_environment(stack, guide, idp, backend, app)


def test_every_compiled_test_file_is_run_here(compiled_tests: Path) -> None:
    assert sorted(path.name for path in compiled_tests.glob("*.test.js")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_typescript_sdk_against_the_real_stack(
    name: str, compiled_tests: Path, node_env: dict[str, str]
) -> None:
    passes_every_test(name, compiled_tests, node_env)
