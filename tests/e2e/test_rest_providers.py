"""The provider registry through the real Envoy, as the product docs use it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.oidc_server import OidcServer, start_oidc_server
from tools.devstack import ROOT, Stack

# Step 1 of the agent-sessions guide, verbatim.
SALESFORCE = """{
    "name": "salesforce",
    "auth_type": "oauth2",
    "client_id": "SF_CLIENT_ID",
    "client_secret": "SF_CLIENT_SECRET",
    "auth_url": "https://login.salesforce.com/services/oauth2/authorize",
    "token_url": "https://login.salesforce.com/services/oauth2/token",
    "scopes": ["crm:contacts:read", "crm:contacts:write"],
    "params": { "skip_scope_on_exchange": true }
  }"""
GOOGLE_CALENDAR = """{
    "name": "google-calendar",
    "auth_type": "oauth2",
    "client_id": "GOOGLE_CLIENT_ID",
    "client_secret": "GOOGLE_CLIENT_SECRET",
    "issuer": "https://accounts.google.com",
    "enable_discovery": true,
    "scopes": ["https://www.googleapis.com/auth/calendar.events.readonly"]
  }"""


def admin(stack: Stack) -> dict[str, str]:
    return {"X-API-Key": stack.admin_key, "Content-Type": "application/json"}


def error_reason(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert body["message"], body
    (detail,) = body["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    return str(detail["reason"])


def provider_count(rest: httpx.Client, stack: Stack) -> int:
    listed = rest.get("/v1/providers", params={"show_deleted": "true"}, headers=admin(stack))
    assert listed.status_code == 200
    return len(listed.json()["providers"])


def test_envoy_config_validates() -> None:
    envoy = Path(sys.executable).parent / "envoy"
    result = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", "envoy/envoy.yaml", "--log-level", "warn"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_registrations_work_unchanged_and_never_return_the_secret(
    rest: httpx.Client, stack: Stack
) -> None:
    sf = rest.post("/v1/providers", headers=admin(stack), content=SALESFORCE)
    assert sf.status_code == 200, sf.text
    body = sf.json()
    assert body["id"] and body["name"] == "salesforce"
    assert "client_secret" not in body and "SF_CLIENT_SECRET" not in sf.text
    assert body["has_client_secret"] is True
    assert body["params"] == {"skip_scope_on_exchange": True}

    google = rest.post("/v1/providers", headers=admin(stack), content=GOOGLE_CALENDAR)
    assert google.status_code == 200, google.text
    discovery = google.json()["discovery"]
    # Without internet the issuer is unreachable: accepted, pending, with the reason.
    if discovery["status"] == "pending":
        assert "accounts.google.com" in discovery["reason"]
    else:
        assert discovery["status"] == "complete" and google.json()["token_url"]
    assert "GOOGLE_CLIENT_SECRET" not in google.text

    fetched = rest.get("/v1/providers/salesforce", headers=admin(stack))
    assert fetched.status_code == 200 and fetched.json()["id"] == body["id"]


def test_curl_without_content_type_is_accepted(rest: httpx.Client, stack: Stack) -> None:
    # `curl -d` sends application/x-www-form-urlencoded; the docs rely on it working.
    result = subprocess.run(
        [
            "curl",
            "-s",
            "-X",
            "POST",
            f"{stack.rest_url}/v1/providers",
            "-H",
            f"X-API-Key: {stack.admin_key}",
            "-d",
            '{"name": "legacy-crm", "auth_type": "basic_auth", "api_base_url": "https://crm.example"}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(result.stdout)["name"] == "legacy-crm"


def test_discovered_endpoints_are_returned_by_name(
    rest: httpx.Client, stack: Stack, oidc: OidcServer
) -> None:
    created = rest.post(
        "/v1/providers",
        headers=admin(stack),
        json={
            "name": "loopback-idp",
            "auth_type": "oauth2",
            "client_id": "c",
            "client_secret": "s",
            "issuer": oidc.issuer,
            "enable_discovery": True,
            "scopes": ["openid", "profile"],
        },
    )
    assert created.status_code == 200, created.text
    fetched = rest.get("/v1/providers/loopback-idp", headers=admin(stack)).json()
    assert fetched["discovery"]["status"] == "complete"
    assert fetched["auth_url"] == f"{oidc.issuer}/authorize"
    assert fetched["token_url"] == f"{oidc.issuer}/token"
    assert fetched["discovery"]["jwks_uri"] == f"{oidc.issuer}/jwks"


def test_update_delete_and_list_through_rest(rest: httpx.Client, stack: Stack) -> None:
    created = rest.post(
        "/v1/providers",
        headers=admin(stack),
        json={
            "name": "weather",
            "auth_type": "api_key",
            "category": "weather",
            "params": {
                "credential_schema": {
                    "fields": [{"name": "api_key", "in": "query", "key": "appid"}]
                }
            },
        },
    )
    assert created.status_code == 200, created.text
    patched = rest.patch(
        "/v1/providers/weather",
        params={"update_mask": "description"},
        headers=admin(stack),
        json={"description": "Forecasts", "category": "not-changed"},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["description"] == "Forecasts" and patched.json()["category"] == "weather"
    listed = rest.get(
        "/v1/providers",
        params={"category": "weather", "auth_type": "api_key"},
        headers=admin(stack),
    ).json()
    assert [p["name"] for p in listed["providers"]] == ["weather"]
    metadata = rest.get("/v1/providers:metadata", headers=admin(stack)).json()
    api_key = next(g for g in metadata["auth_types"] if g["auth_type"] == "api_key")
    assert [p["credential_fields"] for p in api_key["providers"]] == [["api_key"]]
    deleted = rest.delete("/v1/providers/weather", headers=admin(stack))
    assert deleted.status_code == 200 and deleted.json()["state"] == "deleted"
    gone = rest.get("/v1/providers/weather", headers=admin(stack))
    assert gone.status_code == 404 and error_reason(gone) == "PROVIDER_NOT_FOUND"
    events = rest.get(
        "/v1/audit-events",
        params={"resource": f"providers/{created.json()['id']}"},
        headers=admin(stack),
    ).json()
    assert [e["action"] for e in events["audit_events"]] == [
        "provider.delete",
        "provider.update",
        "provider.create",
    ]


GOOD = {
    "name": "valid-name",
    "auth_type": "oauth2",
    "client_id": "id",
    "client_secret": "TOPSECRET",
    "auth_url": "https://idp.example/authorize",
    "token_url": "https://idp.example/token",
}


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ('{"name": "x",', 400, "MALFORMED_JSON"),
        ("[1, 2]", 400, "MALFORMED_JSON"),
        ("", 400, "INVALID_ARGUMENT"),
        (json.dumps({**GOOD, "bogus_field": 1}), 400, "UNKNOWN_FIELD"),
        (json.dumps({**GOOD, "client_id": ""}), 400, "VALIDATION_FAILED"),
        (json.dumps({**GOOD, "token_url": ""}), 400, "VALIDATION_FAILED"),
        (json.dumps({"name": "weather-x", "auth_type": "api_key"}), 400, "VALIDATION_FAILED"),
        (json.dumps({"name": "ops-x", "auth_type": "nexus"}), 400, "VALIDATION_FAILED"),
        (json.dumps({**GOOD, "name": "Bad Name"}), 400, "VALIDATION_FAILED"),
        (json.dumps({**GOOD, "auth_type": "kerberos"}), 400, "VALIDATION_FAILED"),
        (json.dumps({**GOOD, "scopes": "not-a-list"}), 400, "VALIDATION_FAILED"),
        (json.dumps({**GOOD, "description": "x" * (1024 * 1024 + 10)}), 413, "REQUEST_TOO_LARGE"),
    ],
)
def test_bad_input_gets_a_clear_error_and_writes_nothing(
    rest: httpx.Client, stack: Stack, body: str, status: int, reason: str
) -> None:
    before = provider_count(rest, stack)
    response = rest.post("/v1/providers", headers=admin(stack), content=body)
    assert response.status_code == status, response.text
    assert error_reason(response) == reason
    assert "TOPSECRET" not in response.text
    assert provider_count(rest, stack) == before


def test_duplicate_name_is_a_conflict(rest: httpx.Client, stack: Stack) -> None:
    body = {**GOOD, "name": "dupe"}
    assert rest.post("/v1/providers", headers=admin(stack), json=body).status_code == 200
    before = provider_count(rest, stack)
    again = rest.post("/v1/providers", headers=admin(stack), json=body)
    assert again.status_code == 409 and error_reason(again) == "PROVIDER_ALREADY_EXISTS"
    assert provider_count(rest, stack) == before


def test_invalid_discovery_document_is_rejected(rest: httpx.Client, stack: Stack) -> None:
    before = provider_count(rest, stack)
    with start_oidc_server(bad_issuer=True) as impostor:
        response = rest.post(
            "/v1/providers",
            headers=admin(stack),
            json={
                **GOOD,
                "name": "impostor",
                "auth_url": "",
                "token_url": "",
                "issuer": impostor.issuer,
                "enable_discovery": True,
            },
        )
    assert response.status_code == 400 and error_reason(response) == "DISCOVERY_DOCUMENT_INVALID"
    assert provider_count(rest, stack) == before


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "nxa_wrong"}, {"X-API-Key": ""}])
def test_missing_or_wrong_api_key_is_401_and_writes_nothing(
    rest: httpx.Client, stack: Stack, headers: dict[str, Any]
) -> None:
    before = provider_count(rest, stack)
    response = rest.post("/v1/providers", headers=headers, json={**GOOD, "name": "sneaky"})
    assert response.status_code == 401 and error_reason(response) == "UNAUTHENTICATED"
    assert rest.get("/v1/providers", headers=headers).status_code == 401
    assert provider_count(rest, stack) == before


def test_unknown_paths_and_query_parameters_are_clear_errors(
    rest: httpx.Client, stack: Stack
) -> None:
    unknown_path = rest.get("/v1/nothing-here", headers=admin(stack))
    assert unknown_path.status_code == 404 and error_reason(unknown_path) == "METHOD_NOT_FOUND"
    unknown_query = rest.get("/v1/providers", params={"colour": "red"}, headers=admin(stack))
    assert unknown_query.status_code == 400 and error_reason(unknown_query) == "INVALID_REQUEST"


async def test_native_grpc_passes_through_envoy(stack: Stack) -> None:
    import grpc
    from nexus.broker.v1 import providers_pb2
    from nexus.gateway.v1 import gateway_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports['rest']}") as channel:
        registry = gateway_pb2_grpc.ProviderServiceStub(channel)
        reply = await registry.ListProviders(
            providers_pb2.ListProvidersRequest(), metadata=(("x-api-key", stack.admin_key),)
        )
        assert all(p.id for p in reply.providers)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await registry.ListProviders(providers_pb2.ListProvidersRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_confirm_endpoints_is_an_admin_custom_method(rest: httpx.Client, stack: Stack) -> None:
    created = rest.post(
        "/v1/providers", headers=admin(stack), json={**json.loads(SALESFORCE), "name": "moving"}
    )
    assert created.status_code == 200, created.text
    assert created.json()["endpoints_pending"] is False
    path = f"/v1/providers/{created.json()['id']}:confirmEndpoints"
    refused = rest.post(path, headers={"X-API-Key": "not-a-key"})
    assert refused.status_code == 401 and error_reason(refused) == "UNAUTHENTICATED"
    # Nothing waits (no connection holds tokens), so confirming changes nothing.
    confirmed = rest.post(path, headers={"X-API-Key": stack.admin_key})
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json() == created.json()
    missing = rest.post("/v1/providers/nobody:confirmEndpoints", headers=admin(stack))
    assert missing.status_code == 404 and error_reason(missing) == "PROVIDER_NOT_FOUND"
