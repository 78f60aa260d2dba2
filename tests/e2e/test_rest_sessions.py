"""The agent-sessions guide run through the real Envoy on PostgreSQL: Steps 1-5
as written (the providers' URLs pointed at the real OAuth server from npm),
with a real HTTP server standing in for BACKEND_AUTH_URL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from tests.e2e.test_rest_providers import error_reason
from tests.support.backend_auth_server import BackendAuthServer
from tests.support.browser import follow_until
from tests.support.metrics import sample_sum
from tests.support.oidc_server import OidcServer
from tools.devstack import Stack

CALENDAR_SCOPE = "https://www.googleapis.com/auth/calendar.events.readonly"


def curl(
    rest: httpx.Client, path: str, headers: dict[str, str], data: str, method: str = "POST"
) -> httpx.Response:
    """What ``curl -X <method> -H ... -d '<data>'`` sends: without its own
    Content-Type header, curl declares a form."""
    sent = {"Content-Type": "application/x-www-form-urlencoded", **headers}
    return rest.request(method, path, headers=sent, content=data)


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def guide(stack: Stack, idp: OidcServer) -> Iterator[dict[str, Any]]:
    """Steps 1-3 of the guide, once: providers, agents, and sarah connected."""
    key = {"X-API-Key": stack.admin_key}
    json_key = {**key, "Content-Type": "application/json"}
    with httpx.Client(base_url=stack.rest_url, timeout=30) as rest:
        # Step 1 — Register your providers (one-time admin)
        salesforce = ok(
            curl(
                rest,
                "/v1/providers",
                json_key,
                f"""{{
                  "name": "salesforce",
                  "auth_type": "oauth2",
                  "client_id": "SF_CLIENT_ID",
                  "client_secret": "SF_CLIENT_SECRET",
                  "auth_url": "{idp.issuer}/authorize",
                  "token_url": "{idp.issuer}/token",
                  "scopes": ["crm:contacts:read", "crm:contacts:write"],
                  "params": {{ "skip_scope_on_exchange": true }}
                }}""",
            )
        )
        calendar = ok(
            curl(
                rest,
                "/v1/providers",
                json_key,
                f"""{{
                  "name": "google-calendar",
                  "auth_type": "oauth2",
                  "client_id": "GOOGLE_CLIENT_ID",
                  "client_secret": "GOOGLE_CLIENT_SECRET",
                  "issuer": "{idp.issuer}",
                  "enable_discovery": true,
                  "scopes": ["{CALENDAR_SCOPE}"]
                }}""",
            )
        )
        # Step 2 — Register your agents (one-time admin)
        crm = ok(
            curl(
                rest,
                "/admin/v1/agents",
                json_key,
                """{
                  "agent_id": "crm-agent",
                  "description": "Reads customer records from Salesforce",
                  "allowed_scopes": ["crm:contacts:read"]
                }""",
            )
        )
        calendar_agent = ok(
            curl(
                rest,
                "/admin/v1/agents",
                key,
                f"""{{
                  "agent_id": "calendar-agent",
                  "description": "Reads calendar events",
                  "allowed_scopes": ["{CALENDAR_SCOPE}"]
                }}""",
            )
        )
        ops = ok(
            curl(
                rest,
                "/admin/v1/agents",
                key,
                """{
                  "agent_id": "ops-agent",
                  "description": "Executes authorized internal financial operations",
                  "allowed_scopes": ["acme:gliding", "acme:flaring"]
                }""",
            )
        )
        # The guide's internal-ops provider, registered like any other.
        ok(
            curl(
                rest,
                "/v1/providers",
                json_key,
                '{"name": "internal-ops", "auth_type": "nexus", '
                '"scopes": ["acme:gliding", "acme:flaring"]}',
            )
        )
        # Step 3 — Connect users to providers
        connections = {
            provider["name"]: connect(rest, key, provider["id"], scopes)
            for provider, scopes in (
                (salesforce, ["crm:contacts:read", "crm:contacts:write"]),
                (calendar, [CALENDAR_SCOPE]),
            )
        }
    yield {
        "keys": {
            "crm-agent": crm["agent_key"],
            "calendar-agent": calendar_agent["agent_key"],
            "ops-agent": ops["agent_key"],
        },
        "agents": [crm["agent"], calendar_agent["agent"], ops["agent"]],
        "connections": connections,
    }


def connect(rest: httpx.Client, key: dict[str, str], provider_id: str, scopes: list[str]) -> str:
    started = ok(
        curl(
            rest,
            "/v1/request-connection",
            key,
            json.dumps(
                {
                    "workspace_id": "user_sarah",
                    "provider_id": provider_id,
                    "scopes": scopes,
                    "return_url": "http://localhost:3000/connections/callback",
                }
            ),
        )
    )
    # The user's browser: authorize at the provider, come back through Nexus.
    with httpx.Client(timeout=30) as browser:
        back = follow_until(browser, started["auth_url"], "http://localhost:3000")
    assert back.status_code == 302, back.text
    return finish_connection(rest, key, started, back.headers["location"])


def finish_connection(
    rest: httpx.Client, key: dict[str, str], started: dict[str, Any], landing: str
) -> str:
    """The app's side once the browser lands on ``landing`` (its return_url):
    in production the connection waits for the app to confirm it, which the app
    does after checking that its signed-in user owns the workspace."""
    outcome = parse_qs(urlsplit(landing).query)
    assert outcome["status"] == ["success"], outcome
    connection_id = str(started["connection_id"])
    if started["confirmation_required"]:
        waiting = ok(rest.get(f"/v1/check-connection/{connection_id}", headers=key))
        assert waiting["status"] == "unconfirmed"
        code = json.dumps({"confirmation": outcome["confirmation"][0]})
        ok(curl(rest, f"/v1/connections/{connection_id}:confirm", key, code))
    checked = ok(rest.get(f"/v1/check-connection/{connection_id}", headers=key))
    assert checked["status"] == "active"
    return connection_id


def bearer(guide: dict[str, Any], agent: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {guide['keys'][agent]}"}


def verify(stack: Stack, token: str, audience: str) -> dict[str, Any]:
    """Verify a session token as a downstream service would: PyJWT and the JWK
    Set published through Envoy, fetched without any credential."""
    published = httpx.get(f"{stack.rest_url}/.well-known/jwks.json", timeout=10)
    assert published.status_code == 200
    assert published.headers["content-type"].startswith("application/jwk-set+json")
    keys = jwt.PyJWKSet.from_dict(published.json())
    kid = jwt.get_unverified_header(token)["kid"]
    claims: dict[str, Any] = jwt.decode(
        token,
        next(k for k in keys.keys if k.key_id == kid),
        algorithms=["ES256"],
        audience=audience,
        issuer=stack.rest_url,
    )
    return claims


def test_step_2_agents_are_registered_and_their_keys_shown_once(
    rest: httpx.Client, stack: Stack, guide: dict[str, Any]
) -> None:
    crm = guide["agents"][0]
    assert crm["agent_id"] == "crm-agent" and crm["allowed_scopes"] == ["crm:contacts:read"]
    assert crm["enabled"] is True
    assert all(key.startswith("nxag_") for key in guide["keys"].values())
    listed = ok(rest.get("/admin/v1/agents", headers={"X-API-Key": stack.admin_key}))
    assert [a["agent_id"] for a in listed["agents"]] == ["calendar-agent", "crm-agent", "ops-agent"]
    assert not any(key in json.dumps(listed) for key in guide["keys"].values())


def test_step_4_crm_agent_gets_a_read_only_session_and_no_write(
    rest: httpx.Client, stack: Stack, guide: dict[str, Any], idp: OidcServer
) -> None:
    asked = {"agent_id": "crm-agent", "provider": "salesforce", "scopes": ["crm:contacts:read"]}
    session = ok(
        curl(
            rest,
            "/v1/agent-sessions",
            bearer(guide, "crm-agent"),
            json.dumps(asked | {"ttl_seconds": 900}),
        )
    )
    assert session["connection_id"] == guide["connections"]["salesforce"]
    assert session["scopes"] == ["crm:contacts:read"] and session["token_type"] == "Bearer"
    # The guide's salesforce cannot narrow; `make run` (development) hands out the
    # connection's token and says what it really carries.
    assert session["token_scopes"] == ["crm:contacts:read", "crm:contacts:write"]
    assert isinstance(session["expires_at"], int)
    assert session["expires_at"] <= int(time.time()) + 900
    userinfo = httpx.get(
        f"{idp.issuer}/userinfo", headers={"Authorization": f"Bearer {session['access_token']}"}
    )
    assert userinfo.status_code == 200
    claims = verify(stack, session["session_token"], "salesforce")
    assert claims["client_id"] == "crm-agent" and claims["scope"] == "crm:contacts:read"

    write = curl(
        rest,
        "/v1/agent-sessions",
        bearer(guide, "crm-agent"),
        json.dumps(asked | {"scopes": ["crm:contacts:write"]}),
    )
    assert write.status_code == 403 and error_reason(write) == "AGENT_SCOPE_NOT_ALLOWED"
    assert "crm:contacts:write" in write.json()["message"]

    # defer nexusClient.CloseAgentSession(ctx, session.SessionID)
    closed = rest.delete(
        f"/v1/agent-sessions/{session['session_id']}", headers=bearer(guide, "crm-agent")
    )
    assert closed.status_code == 200 and closed.json() == {}
    again = rest.delete(
        f"/v1/agent-sessions/{session['session_id']}", headers=bearer(guide, "crm-agent")
    )
    assert again.status_code == 200
    inactive = curl(
        rest,
        "/v1/agent-sessions:introspect",
        bearer(guide, "crm-agent"),
        json.dumps({"token": session["session_token"]}),
    )
    assert ok(inactive) == {"active": False}


def test_step_4_calendar_agent_reads_calendar(rest: httpx.Client, guide: dict[str, Any]) -> None:
    session = ok(
        curl(
            rest,
            "/v1/agent-sessions",
            bearer(guide, "calendar-agent"),
            json.dumps(
                {
                    "agent_id": "calendar-agent",
                    "provider": "google-calendar",
                    "scopes": [CALENDAR_SCOPE],
                }
            ),
        )
    )
    assert session["connection_id"] == guide["connections"]["google-calendar"]
    # The CRM agent may not borrow the calendar's scope.
    borrowed = curl(
        rest,
        "/v1/agent-sessions",
        bearer(guide, "crm-agent"),
        json.dumps(
            {"agent_id": "crm-agent", "provider": "google-calendar", "scopes": [CALENDAR_SCOPE]}
        ),
    )
    assert borrowed.status_code == 403 and error_reason(borrowed) == "AGENT_SCOPE_NOT_ALLOWED"


def obo(rest: httpx.Client, guide: dict[str, Any], user_token: str, **extra: Any) -> httpx.Response:
    body = {
        "agent_id": "ops-agent",
        "provider": "internal-ops",
        "scopes": ["acme:gliding"],
        "user_context_token": user_token,
    }
    return curl(rest, "/v1/obo-sessions", bearer(guide, "ops-agent"), json.dumps(body | extra))


def test_step_5_obo_session_is_stamped_for_a_permitted_user(
    rest: httpx.Client, stack: Stack, guide: dict[str, Any], backend: BackendAuthServer
) -> None:
    user_token = backend.issue_token(
        "sarah", permissions=["acme:gliding"], tenant_id="acme-eu", clearance_level="secret"
    )
    session = ok(obo(rest, guide, user_token))

    assert session["acting_for"] == "sarah"
    assert (session["tenant_id"], session["clearance_level"]) == ("acme-eu", "secret")
    assert session["access_token"] == session["session_token"]
    claims = verify(stack, session["session_token"], "internal-ops")
    assert claims["act"] == {"sub": "ops-agent"} and claims["sub"] == "sarah"
    assert (claims["tenant_id"], claims["clearance_level"]) == ("acme-eu", "secret")
    active = ok(
        curl(
            rest,
            "/v1/agent-sessions:introspect",
            bearer(guide, "ops-agent"),
            json.dumps({"token": session["session_token"]}),
        )
    )
    assert active["active"] is True and active["acting_for"] == "sarah"
    assert active["exp"] == session["expires_at"]


@pytest.mark.parametrize(
    ("user", "status", "reason"),
    [
        ("without-permission", 403, "USER_PERMISSION_MISSING"),
        ("expired", 401, "USER_TOKEN_INVALID"),
        ("forged", 401, "USER_TOKEN_INVALID"),
    ],
)
def test_step_5_obo_is_refused_for_the_wrong_user(
    rest: httpx.Client,
    guide: dict[str, Any],
    backend: BackendAuthServer,
    user: str,
    status: int,
    reason: str,
) -> None:
    token = {
        "without-permission": lambda: backend.issue_token("bob", permissions=["acme:flaring"]),
        "expired": lambda: backend.issue_token(
            "sarah", permissions=["acme:gliding"], expires_in=-60
        ),
        "forged": lambda: backend.forge_token("sarah", permissions=["acme:gliding"]),
    }[user]()
    refused = obo(rest, guide, token)
    assert refused.status_code == status and error_reason(refused) == reason
    assert token not in refused.text


def test_step_5_obo_fails_closed_when_the_backend_fails(
    rest: httpx.Client, guide: dict[str, Any], backend: BackendAuthServer
) -> None:
    # A user never seen before, so no cached decision can answer for the backend.
    token = backend.issue_token("carol", permissions=["acme:gliding"])
    backend.set_mode("server_error")
    try:
        refused = obo(rest, guide, token)
    finally:
        backend.set_mode("ok")
    assert refused.status_code == 503 and error_reason(refused) == "BACKEND_AUTH_UNAVAILABLE"


def test_identity_one_agent_cannot_act_as_another(
    rest: httpx.Client, guide: dict[str, Any], backend: BackendAuthServer
) -> None:
    token = backend.issue_token("sarah", permissions=["acme:gliding"])
    body = {
        "agent_id": "ops-agent",
        "provider": "internal-ops",
        "scopes": ["acme:gliding"],
        "user_context_token": token,
    }
    as_other = curl(rest, "/v1/obo-sessions", bearer(guide, "crm-agent"), json.dumps(body))
    assert as_other.status_code == 403 and error_reason(as_other) == "AGENT_MISMATCH"
    no_key = curl(rest, "/v1/obo-sessions", {}, json.dumps(body))
    assert no_key.status_code == 401
    admin_only = rest.get("/admin/v1/agents", headers=bearer(guide, "crm-agent"))
    assert admin_only.status_code == 401


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({"agent_id": "ghost-agent"}, 403, "AGENT_MISMATCH"),
        ({"provider": "no-such-provider"}, 404, "PROVIDER_NOT_FOUND"),
        ({"scopes": []}, 400, "VALIDATION_FAILED"),
        ({"ttl_seconds": 0}, 400, "VALIDATION_FAILED"),
        ({"ttl_seconds": 1_000_000}, 400, "VALIDATION_FAILED"),
        ({"ttl_seconds": "soon"}, 400, "VALIDATION_FAILED"),
        ({"scope": ["acme:gliding"]}, 400, "UNKNOWN_FIELD"),
        ({"user_context_token": ""}, 400, "VALIDATION_FAILED"),
    ],
)
def test_bad_obo_input_gets_a_clear_4xx(
    rest: httpx.Client,
    guide: dict[str, Any],
    backend: BackendAuthServer,
    change: dict[str, Any],
    status: int,
    reason: str,
) -> None:
    token = backend.issue_token("sarah", permissions=["acme:gliding"])
    refused = obo(rest, guide, token, **change)
    assert refused.status_code == status, refused.text
    assert error_reason(refused) == reason
    assert refused.json()["message"]


def test_an_unknown_agent_is_not_found_for_an_admin(
    rest: httpx.Client, stack: Stack, guide: dict[str, Any]
) -> None:
    refused = curl(
        rest,
        "/v1/agent-sessions",
        {"X-API-Key": stack.admin_key},
        json.dumps(
            {"agent_id": "ghost-agent", "provider": "internal-ops", "scopes": ["acme:gliding"]}
        ),
    )
    assert refused.status_code == 404 and error_reason(refused) == "AGENT_NOT_FOUND"


def test_rotating_and_disabling_an_agent_through_envoy(
    rest: httpx.Client, stack: Stack, guide: dict[str, Any]
) -> None:
    admin = {"X-API-Key": stack.admin_key}
    created = ok(
        curl(
            rest,
            "/admin/v1/agents",
            admin,
            '{"agent_id": "rotating-agent", "allowed_scopes": ["acme:gliding"]}',
        )
    )
    ask = json.dumps(
        {"agent_id": "rotating-agent", "provider": "internal-ops", "scopes": ["acme:gliding"]}
    )

    def status(key: str) -> int:
        return curl(rest, "/v1/agent-sessions", {"Authorization": f"Bearer {key}"}, ask).status_code

    assert status(created["agent_key"]) == 200
    # curl -X POST .../rotating-agent:rotateKey, with no body: no grace period.
    rotated = ok(rest.post("/admin/v1/agents/rotating-agent:rotateKey", headers=admin))
    assert rotated["agent"]["key_id"] != created["agent"]["key_id"]
    assert (status(created["agent_key"]), status(rotated["agent_key"])) == (401, 200)
    graced = ok(
        curl(
            rest,
            "/admin/v1/agents/rotating-agent:rotateKey",
            admin,
            '{"grace_period_seconds": 600}',
        )
    )
    assert (status(rotated["agent_key"]), status(graced["agent_key"])) == (200, 200)

    disabled = ok(
        curl(rest, "/admin/v1/agents/rotating-agent", admin, '{"enabled": false}', "PATCH")
    )
    assert disabled["enabled"] is False
    refused = curl(
        rest, "/v1/agent-sessions", {"Authorization": f"Bearer {graced['agent_key']}"}, ask
    )
    assert refused.status_code == 403 and error_reason(refused) == "AGENT_DISABLED"
    assert ok(rest.delete("/admin/v1/agents/rotating-agent", headers=admin)) == {}
    assert status(graced["agent_key"]) == 401


def test_each_service_process_serves_metrics_of_what_it_did(
    rest: httpx.Client, stack: Stack, guide: dict[str, Any]
) -> None:
    def scrape() -> dict[str, str]:
        return {
            name: httpx.get(stack.metrics_url(name)).text
            for name in ("gateway", "broker", "policy")
        }

    asked = {"agent_id": "crm-agent", "provider": "salesforce", "scopes": ["crm:contacts:read"]}
    before = scrape()
    ok(curl(rest, "/v1/agent-sessions", bearer(guide, "crm-agent"), json.dumps(asked)))
    denied = curl(
        rest,
        "/v1/agent-sessions",
        bearer(guide, "crm-agent"),
        json.dumps(asked | {"scopes": ["crm:contacts:write"]}),
    )
    assert denied.status_code == 403
    after = scrape()

    def grown(service: str, name: str, **labels: str) -> float:
        return sample_sum(after[service], name, **labels) - sample_sum(
            before[service], name, **labels
        )

    handled = "grpc_server_handled_total"
    public = {"grpc_service": "nexus.gateway.v1.SessionService"}
    assert (
        grown("gateway", handled, grpc_method="CreateAgentSession", grpc_code="OK", **public) == 1
    )
    assert grown("gateway", handled, grpc_code="PERMISSION_DENIED", **public) == 1, (
        "the denial is counted by its status code"
    )
    assert grown("broker", "nexus_sessions_total", outcome="granted", kind="agent") == 1
    assert (
        grown("broker", "nexus_sessions_total", reason="AGENT_SCOPE_NOT_ALLOWED", kind="agent") == 1
    )
    # The policy service decided the denial (a denial is never answered from a cache);
    # the grant and the agent's key it may have answered before, for an earlier test, and
    # the gateway and the broker remember those until the agent changes.
    assert (
        grown("policy", handled, grpc_method="AuthorizeAccess", grpc_code="PERMISSION_DENIED") == 1
    )
    assert grown("policy", handled, grpc_method="AuthorizeAccess") <= 2
    assert grown("policy", handled, grpc_method="AuthenticateAgent", grpc_code="OK") <= 2
    assert not any(key in text for text in after.values() for key in guide["keys"].values())
