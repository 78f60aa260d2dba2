"""Who may reach what, tried cell by cell: four agents against four connections
on every credential path, through the real Envoy (REST) and over gRPC, on
PostgreSQL, with production's defaults (NEXUS_ENVIRONMENT=production).

Two users, alice and bob, each own a workspace named after them, with a
connected ``crm`` (OAuth, the real OAuth server from npm) and ``weather-api``
(an API key) connection. The agents:

    ws-a-agent       providers *, workspaces [alice]
    weather-agent    providers [weather-api], workspaces *
    obo-agent        providers *, on behalf of a user only
    star-agent       providers *, workspaces *

Every agent may hold both crm scopes, so GetToken's scope rule is tried on
its own (test_holes.py); here only bindings decide.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nexus.broker.v1 import connections_pb2, sessions_pb2
from nexus.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from tests.e2e.test_rest_sessions import finish_connection
from tests.support.app_server import GOOD_API_KEY, AppServer
from tests.support.backend_auth_server import BackendAuthServer
from tests.support.browser import follow_until
from tests.support.oidc_server import OidcServer
from tools.devstack import Stack

CRM_SCOPES = ["crm:contacts:read", "crm:contacts:write"]
AGENTS = {
    "ws-a-agent": {"providers": ["*"], "workspaces": ["alice"]},
    "weather-agent": {"providers": ["weather-api"], "workspaces": ["*"]},
    "obo-agent": {"providers": ["*"], "on_behalf_of_only": True},
    "star-agent": {"providers": ["*"], "workspaces": ["*"]},
}
OK = "OK"
# Another's connection reads to an agent as one that does not exist.
HIDDEN = "CONNECTION_NOT_FOUND"
CONNECTIONS = ("alice-crm", "bob-crm", "alice-weather", "bob-weather")


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return {"NEXUS_ENVIRONMENT": "production"}


@dataclass
class World:
    keys: dict[str, str]
    # "alice-crm" -> connection id
    connections: dict[str, str]
    admin: dict[str, str]


def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def connect_crm(rest: httpx.Client, admin: dict[str, str], workspace: str) -> str:
    started = _ok(
        rest.post(
            "/v1/request-connection",
            headers=admin,
            json={
                "workspace_id": workspace,
                "provider_name": "crm",
                "scopes": CRM_SCOPES,
                "return_url": "http://localhost:3000/done",
            },
        )
    )
    with httpx.Client(timeout=30) as browser:
        back = follow_until(browser, started["auth_url"], "http://localhost:3000")
    return finish_connection(rest, admin, started, back.headers["location"])


def _connect_weather(
    rest: httpx.Client, admin: dict[str, str], workspace: str, app: AppServer
) -> str:
    started = _ok(
        rest.post(
            "/v1/request-connection",
            headers=admin,
            json={
                "workspace_id": workspace,
                "provider_name": "weather-api",
                "return_url": f"{app.url}/done",
            },
        )
    )
    with httpx.Client(follow_redirects=True, timeout=30) as browser:
        page = browser.get(started["auth_url"])
        landing = browser.post(page.url, data={"api_key": GOOD_API_KEY})
    return finish_connection(rest, admin, started, str(landing.url))


def register_crm(
    rest: httpx.Client, admin: dict[str, str], idp: OidcServer, **params: object
) -> None:
    """The crm provider, on the real OAuth server from npm."""
    _ok(
        rest.post(
            "/v1/providers",
            headers=admin,
            json={
                "name": "crm",
                "auth_type": "oauth2",
                "client_id": "nexus-client",
                "client_secret": "s3cret",
                "issuer": idp.issuer,
                "enable_discovery": True,
                "scopes": CRM_SCOPES,
                "params": params,
            },
        )
    )


@pytest.fixture(scope="module")
def world(stack: Stack, idp: OidcServer, app: AppServer) -> World:
    admin = {"X-API-Key": stack.admin_key}
    with httpx.Client(base_url=stack.rest_url, timeout=30) as rest:
        register_crm(rest, admin, idp, supports_scope_narrowing=True)
        _ok(
            rest.post(
                "/v1/providers",
                headers=admin,
                json={
                    "name": "weather-api",
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
        )
        keys = {
            agent_id: _ok(
                rest.post(
                    "/admin/v1/agents",
                    headers=admin,
                    json={
                        "agent_id": agent_id,
                        "allowed_scopes": CRM_SCOPES,
                        "bindings": bindings,
                    },
                )
            )["agent_key"]
            for agent_id, bindings in AGENTS.items()
        }
        connections = {}
        for user in ("alice", "bob"):
            connections[f"{user}-crm"] = connect_crm(rest, admin, user)
            connections[f"{user}-weather"] = _connect_weather(rest, admin, user, app)
    return World(keys, connections, admin)


# The documented rule, cell by cell: agent -> connection -> answer.
BINDING_RULE = {
    "ws-a-agent": {
        "alice-crm": OK,
        "bob-crm": HIDDEN,
        "alice-weather": OK,
        "bob-weather": HIDDEN,
    },
    "weather-agent": {
        "alice-crm": HIDDEN,
        "bob-crm": HIDDEN,
        "alice-weather": OK,
        "bob-weather": OK,
    },
    "obo-agent": dict.fromkeys(CONNECTIONS, "AGENT_OBO_ONLY"),
    "star-agent": dict.fromkeys(CONNECTIONS, OK),
}


def _refresh_rule(agent: str, connection: str) -> str:
    # Allowed on a static credential, the refresh itself is refused.
    allowed = BINDING_RULE[agent][connection]
    return "REFRESH_NOT_SUPPORTED" if allowed == OK and "weather" in connection else allowed


def _session_rule(agent: str, connection: str) -> str:
    if "weather" in connection:
        return "SESSION_NOT_SUPPORTED"  # static credentials cannot be scoped
    return BINDING_RULE[agent][connection]


def _obo_rule(agent: str, connection: str) -> str:
    """Acting for alice: only alice's workspace, and only agents bound to crm."""
    if "weather" in connection:
        return "SESSION_NOT_SUPPORTED"
    if agent == "weather-agent":
        return HIDDEN
    return OK if connection == "alice-crm" else HIDDEN


RULES = {
    "get_token": lambda a, c: BINDING_RULE[a][c],
    "refresh": _refresh_rule,
    "agent_session": _session_rule,
    "obo_session": _obo_rule,
}
CELLS = [
    (path, agent, connection) for path in RULES for agent in AGENTS for connection in CONNECTIONS
]


def _provider(connection: str) -> str:
    return "crm" if connection.endswith("crm") else "weather-api"


def _session_body(agent: str, connection_id: str, provider: str) -> dict[str, Any]:
    return {
        "agent_id": agent,
        "provider": provider,
        "scopes": ["crm:contacts:read"],
        "connection_id": connection_id,
    }


async def _grpc_answer(
    stack: Stack, path: str, key: str, agent: str, connection_id: str, provider: str, user: str
) -> str:
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(stack.gateway_target) as channel:
        connections = gateway_pb2_grpc.ConnectionServiceStub(channel)
        sessions = gateway_pb2_grpc.SessionServiceStub(channel)
        body = _session_body(agent, connection_id, provider)
        try:
            if path == "get_token":
                await connections.GetToken(
                    connections_pb2.GetTokenRequest(connection_id=connection_id),
                    metadata=metadata,
                )
            elif path == "refresh":
                await connections.RefreshConnection(
                    connections_pb2.RefreshConnectionRequest(connection_id=connection_id),
                    metadata=metadata,
                )
            elif path == "agent_session":
                await sessions.CreateAgentSession(
                    gateway_pb2.CreateAgentSessionRequest(
                        session=sessions_pb2.CreateAgentSessionRequest(**body)
                    ),
                    metadata=metadata,
                )
            else:
                await sessions.CreateOboSession(
                    gateway_pb2.CreateOboSessionRequest(
                        session=sessions_pb2.CreateOboSessionRequest(
                            **body, user_context_token=user
                        )
                    ),
                    metadata=metadata,
                )
        except grpc.aio.AioRpcError as error:
            status = rpc_status.from_call(error)
            assert status is not None
            info = error_details_pb2.ErrorInfo()
            assert status.details[0].Unpack(info)
            return info.reason
    return OK


@pytest.mark.parametrize(("path", "agent", "connection"), CELLS)
async def test_each_agent_reaches_each_connection_as_the_rule_says(
    stack: Stack,
    world: World,
    backend: BackendAuthServer,
    path: str,
    agent: str,
    connection: str,
) -> None:
    expected = RULES[path](agent, connection)
    alice = backend.issue_token("alice", permissions=["crm:contacts:read"], workspaces=["alice"])
    connection_id = world.connections[connection]
    provider = _provider(connection)
    key = world.keys[agent]

    over_grpc = await _grpc_answer(stack, path, key, agent, connection_id, provider, alice)
    over_rest = _rest_answer_for(stack, path, key, agent, connection_id, provider, alice)

    assert (over_grpc, over_rest) == (expected, expected)


def _rest_answer_for(
    stack: Stack, path: str, key: str, agent: str, connection_id: str, provider: str, user: str
) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    body = _session_body(agent, connection_id, provider)
    with httpx.Client(base_url=stack.rest_url, timeout=30, headers=headers) as rest:
        if path == "get_token":
            response = rest.get(f"/v1/token/{connection_id}")
        elif path == "refresh":
            response = rest.post(f"/v1/refresh/{connection_id}")
        elif path == "agent_session":
            response = rest.post("/v1/agent-sessions", json=body)
        else:
            response = rest.post("/v1/obo-sessions", json=body | {"user_context_token": user})
    if response.status_code == 200:
        return OK
    return str(response.json()["details"][0]["reason"])


def _trail(rest: httpx.Client, admin: dict[str, str]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    token = ""
    while True:
        page = _ok(rest.get("/v1/audit-events", params={"page_token": token}, headers=admin))
        events += page["audit_events"]
        token = page["next_page_token"]
        if not token:
            return events


def test_grants_and_denials_on_these_paths_are_in_the_audit_trail(
    rest: httpx.Client, stack: Stack, world: World
) -> None:
    weather, crm = world.connections["alice-weather"], world.connections["alice-crm"]
    granted = _rest_answer_for(stack, "get_token", world.keys["weather-agent"], "", weather, "", "")
    denied = _rest_answer_for(stack, "get_token", world.keys["weather-agent"], "", crm, "", "")
    assert (granted, denied) == (OK, HIDDEN)

    trail = _trail(rest, world.admin)
    releases = [e for e in trail if e["action"] == "token.release"]
    refusals = [e for e in trail if e["action"] == "access.denied"]
    assert any(
        e["resource"] == f"connections/{weather}" and e["actor"] == "agent:weather-agent"
        for e in releases
    )
    assert any(
        e["resource"] == f"connections/{crm}"
        and e["actor"] == "agent:weather-agent"
        and e["details"]["reason"] == "PROVIDER_NOT_BOUND"
        and e["details"]["attempted"] == "get_token"
        for e in refusals
    )
    assert not any(key in json.dumps(trail) for key in world.keys.values())


def _introspect(rest: httpx.Client, headers: dict[str, str], token: str) -> dict[str, Any]:
    return dict(
        _ok(rest.post("/v1/agent-sessions:introspect", headers=headers, json={"token": token}))
    )


def test_only_the_sessions_own_agent_and_admins_see_it_through_envoy(
    rest: httpx.Client, world: World
) -> None:
    own = {"Authorization": f"Bearer {world.keys['star-agent']}"}
    session = _ok(
        rest.post(
            "/v1/agent-sessions",
            headers=own,
            json=_session_body("star-agent", world.connections["bob-crm"], "crm"),
        )
    )
    token = session["session_token"]
    assert _introspect(rest, own, token)["active"] is True
    assert _introspect(rest, world.admin, token)["client_id"] == "star-agent"
    stranger = {"Authorization": f"Bearer {world.keys['ws-a-agent']}"}
    assert _introspect(rest, stranger, token) == {"active": False}


def test_an_obo_session_through_envoy_ends_with_its_users_token(
    rest: httpx.Client, world: World, backend: BackendAuthServer
) -> None:
    short = backend.issue_token(
        "alice", permissions=["crm:contacts:read"], expires_in=30, workspaces=["alice"]
    )
    body = _session_body("obo-agent", world.connections["alice-crm"], "crm")
    obo = _ok(
        rest.post(
            "/v1/obo-sessions",
            headers={"Authorization": f"Bearer {world.keys['obo-agent']}"},
            json=body | {"user_context_token": short, "ttl_seconds": 1800},
        )
    )
    assert obo["acting_for"] == "alice"
    assert obo["expires_at"] <= int(time.time()) + 30


def test_disabling_an_agent_ends_its_sessions_through_envoy(
    rest: httpx.Client, stack: Stack, world: World, app: AppServer
) -> None:
    key = _ok(
        rest.post(
            "/admin/v1/agents",
            headers=world.admin,
            json={
                "agent_id": "doomed-agent",
                "allowed_scopes": CRM_SCOPES,
                "bindings": {"providers": ["crm"], "workspaces": ["alice"]},
            },
        )
    )["agent_key"]
    session = _ok(
        rest.post(
            "/v1/agent-sessions",
            headers={"Authorization": f"Bearer {key}"},
            json=_session_body("doomed-agent", world.connections["alice-crm"], "crm"),
        )
    )
    assert _introspect(rest, world.admin, session["session_token"])["active"] is True

    _ok(rest.patch("/admin/v1/agents/doomed-agent", headers=world.admin, json={"enabled": False}))

    assert _introspect(rest, world.admin, session["session_token"]) == {"active": False}
    refused = rest.get(
        f"/v1/token/{world.connections['alice-crm']}", headers={"Authorization": f"Bearer {key}"}
    )
    assert refused.status_code == 403
    assert refused.json()["details"][0]["reason"] == "AGENT_DISABLED"
