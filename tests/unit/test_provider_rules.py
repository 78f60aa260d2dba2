from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from nexus_broker.domain.discovery import Discovery, DiscoveryStatus, parse_discovery_document
from nexus_broker.domain.params import parse_params
from nexus_broker.domain.providers import (
    Provider,
    ProviderSpec,
    token_endpoint_moves,
    validate_spec,
)
from nexus_common import DiscoveryDocumentInvalid, ProviderEndpointsPending, ValidationFailed

from tests.samples import SALESFORCE_SPEC

SALESFORCE = SALESFORCE_SPEC
API_KEY_SCHEMA = {
    "credential_schema": {"fields": [{"name": "api_key", "in": "header", "key": "X-Api-Key"}]}
}
NOW = datetime(2026, 11, 23, tzinfo=UTC)


def _field_of(spec: ProviderSpec, has_secret: bool = True) -> str:
    with pytest.raises(ValidationFailed) as caught:
        validate_spec(spec, has_secret=has_secret)
    return caught.value.metadata["field"]


def test_the_docs_oauth2_registration_is_valid() -> None:
    assert validate_spec(SALESFORCE, has_secret=True).params == {"skip_scope_on_exchange": True}


@pytest.mark.parametrize("name", ["", "Salesforce", "sales force", "sales_force", "x" * 64, "ü"])
def test_names_are_lower_case_slugs(name: str) -> None:
    assert _field_of(replace(SALESFORCE, name=name)) == "name"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"client_id": ""}, "client_id"),
        ({"auth_url": ""}, "auth_url"),
        ({"token_url": ""}, "token_url"),
        ({"auth_url": "", "token_url": "", "enable_discovery": True}, "issuer"),
        ({"auth_type": ""}, "auth_type"),
        ({"auth_type": "saml"}, "auth_type"),
        ({"auth_url": "http://login.salesforce.com/authorize"}, "auth_url"),
        ({"token_url": "https://user:pw@login.salesforce.com/token"}, "token_url"),
        ({"scopes": ("a b",)}, "scopes"),
        ({"scopes": ("a", "a")}, "scopes"),
    ],
)
def test_oauth2_rules_name_the_offending_field(changes: dict[str, Any], field: str) -> None:
    assert _field_of(replace(SALESFORCE, **changes)) == field


def test_oauth2_needs_a_client_secret_unless_it_is_a_public_client() -> None:
    assert _field_of(SALESFORCE, has_secret=False) == "client_secret"
    public = replace(SALESFORCE, params={"token_endpoint_auth_method": "none"})
    validate_spec(public, has_secret=False)


def test_discovery_alone_is_enough_for_oauth2() -> None:
    spec = replace(
        SALESFORCE,
        auth_url="",
        token_url="",
        issuer="https://accounts.google.com",
        enable_discovery=True,
    )
    validate_spec(spec, has_secret=True)


def test_plain_http_is_allowed_only_to_this_machine() -> None:
    validate_spec(replace(SALESFORCE, token_url="http://127.0.0.1:9000/token"), has_secret=True)
    validate_spec(replace(SALESFORCE, token_url="http://localhost:9000/token"), has_secret=True)


def test_api_key_providers_need_a_credential_schema() -> None:
    spec = ProviderSpec(name="weather", auth_type="api_key")
    assert _field_of(spec, has_secret=False) == "params.credential_schema"
    valid = validate_spec(replace(spec, params=API_KEY_SCHEMA), has_secret=False)
    assert valid.params["credential_schema"]["fields"][0] == {
        "name": "api_key",
        "in": "header",
        "key": "X-Api-Key",
        "label": "Api key",
        "required": True,
        "secret": True,
    }


@pytest.mark.parametrize(
    "field_spec",
    [
        {"name": "Key"},
        {"name": "api_key", "in": "cookie"},
        {"name": "api_key", "in": "header", "key": "bad header"},
        {"name": "api_key", "colour": "red"},
    ],
)
def test_bad_credential_fields_are_refused(field_spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationFailed):
        parse_params("api_key", {"credential_schema": {"fields": [field_spec]}})


def test_static_providers_refuse_oauth_settings() -> None:
    spec = ProviderSpec(name="weather", auth_type="api_key", params=API_KEY_SCHEMA)
    assert _field_of(replace(spec, client_id="x"), has_secret=False) == "client_id"
    assert _field_of(spec, has_secret=True) == "client_secret"
    basic = ProviderSpec(name="legacy", auth_type="basic_auth")
    validate_spec(basic, has_secret=False)
    assert _field_of(replace(basic, params=API_KEY_SCHEMA), has_secret=False) == (
        "params.credential_schema"
    )


def test_nexus_providers_declare_their_scopes() -> None:
    spec = ProviderSpec(name="internal-ops", auth_type="nexus")
    assert _field_of(spec, has_secret=False) == "scopes"
    validate_spec(replace(spec, scopes=("acme:gliding",)), has_secret=False)


@pytest.mark.parametrize("core", ["redirect_uri", "state", "code_challenge", "scope", "client_id"])
def test_extra_params_never_override_core_oauth_parameters(core: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_params("oauth2", {core: "x"})
    assert caught.value.metadata["field"] == f"params.{core}"


def test_extra_string_params_become_authorization_parameters() -> None:
    params = parse_params("oauth2", {"access_type": "offline", "prompt": "consent"})
    assert dict(params.auth_params) == {"access_type": "offline", "prompt": "consent"}
    with pytest.raises(ValidationFailed):
        parse_params("oauth2", {"access_type": 1})
    with pytest.raises(ValidationFailed):
        parse_params("oauth2", {"skip_scope_on_auth": "yes"})


GOOD_DOCUMENT = {
    "issuer": "https://issuer.example",
    "authorization_endpoint": "https://issuer.example/authorize",
    "token_endpoint": "https://issuer.example/token",
    "jwks_uri": "https://issuer.example/jwks",
    "response_types_supported": ["code"],
}


def test_a_valid_discovery_document_is_complete() -> None:
    discovery = parse_discovery_document("https://issuer.example", GOOD_DOCUMENT, NOW)
    assert discovery.status == DiscoveryStatus.COMPLETE
    assert discovery.token_endpoint == "https://issuer.example/token"


@pytest.mark.parametrize(
    "changes",
    [
        {"issuer": "https://evil.example"},
        {"issuer": "https://issuer.example/"},
        {"token_endpoint": None},
        {"jwks_uri": "http://issuer.example/jwks"},
        {"response_types_supported": ["token"]},
        {"scopes_supported": "openid"},
    ],
)
def test_invalid_discovery_documents_are_refused(changes: dict[str, Any]) -> None:
    document = {k: v for k, v in {**GOOD_DOCUMENT, **changes}.items() if v is not None}
    with pytest.raises(DiscoveryDocumentInvalid):
        parse_discovery_document("https://issuer.example", document, NOW)


def _provider(**spec: Any) -> Provider:
    return Provider(
        id="p1",
        spec=replace(SALESFORCE, **spec),
        has_client_secret=True,
        discovery=Discovery(),
        created_at=NOW,
        updated_at=NOW,
    )


@pytest.mark.parametrize(
    ("change", "moved"),
    [
        ({"token_url": "https://elsewhere.example/token"}, ["token_url"]),
        ({"revocation_url": "https://elsewhere.example/revoke"}, ["revocation_url"]),
        # These receive no token, and stay under the secret rule alone.
        ({"auth_url": "https://elsewhere.example/authorize"}, []),
        ({"jwks_uri": "https://elsewhere.example/jwks"}, []),
        ({"description": "moved"}, []),
    ],
)
def test_only_endpoints_that_receive_tokens_count_as_token_endpoint_moves(
    change: dict[str, str], moved: list[str]
) -> None:
    assert token_endpoint_moves(_provider(), _provider(**change)) == moved


def test_a_discovered_endpoint_that_moves_is_a_token_endpoint_move() -> None:
    def found(token_endpoint: str) -> Provider:
        discovered = Discovery(status=DiscoveryStatus.COMPLETE, token_endpoint=token_endpoint)
        return replace(_provider(token_url=""), discovery=discovered)

    assert token_endpoint_moves(
        found("https://idp.example/token"), found("https://elsewhere.example/token")
    ) == ["token_url"]


def test_a_provider_with_a_pending_move_refuses_to_send_tokens() -> None:
    _provider().require_endpoints_confirmed()
    pending = replace(_provider(), endpoints_moved_by="admin:alice")
    with pytest.raises(ProviderEndpointsPending) as caught:
        pending.require_endpoints_confirmed()
    assert caught.value.reason == "PROVIDER_ENDPOINTS_PENDING"
    assert "/v1/providers/p1:confirmEndpoints" in caught.value.message
