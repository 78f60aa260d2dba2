"""Pure rules behind the callback and the capture page: the return origin put
into the capture page's CSP, values that cannot travel where a schema sends
them, and RFC 9207 support read from discovery and params."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from nexus_broker.domain.credentials import validate_static_credentials
from nexus_broker.domain.discovery import Discovery, parse_discovery_document
from nexus_broker.domain.providers import Provider, ProviderSpec, validate_spec
from nexus_broker.domain.return_urls import ReturnUrlPolicy, origin_of
from nexus_common import DiscoveryDocumentInvalid, ValidationFailed

from tests.samples import SALESFORCE_SPEC

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ISSUER = "https://idp.example"


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://127.0.0.1:8000/done?x=1", "http://127.0.0.1:8000"),
        ("https://App.Example.com/cb", "https://app.example.com"),
        ("https://app.example.com:443/cb", "https://app.example.com"),
        ("https://app.example.com:8443/cb", "https://app.example.com:8443"),
        ("http://[::1]:3000/", "http://[::1]:3000"),
        ("https://a;script-src *.example.com/", ""),
        ("https://a b.example.com/", ""),
        ("javascript:alert(1)", ""),
    ],
)
def test_the_return_origin_is_a_plain_csp_source(url: str, origin: str) -> None:
    assert origin_of(url) == origin


@given(st.text(alphabet="ab1-.;, '\"*\t[]:%", min_size=1, max_size=40))
def test_no_allowlisted_return_url_can_widen_the_csp(host: str) -> None:
    """Whatever an allowlisted return URL holds, its origin in the CSP is at most
    one source expression."""
    url = f"https://{host}.example.com/cb"
    assume(ReturnUrlPolicy(["https://*.example.com"]).allows(url))
    origin = origin_of(url)
    assert not any(ch in origin for ch in " ;,'\"\t*%")
    assert origin == "" or origin.endswith(".example.com")


def _provider(spec: ProviderSpec, discovery: Discovery | None = None) -> Provider:
    return Provider("p-1", spec, False, discovery or Discovery(), NOW, NOW)


WEATHER = ProviderSpec(
    name="weather",
    auth_type="api_key",
    params={
        "credential_schema": {
            "fields": [
                {"name": "api_key", "in": "header", "key": "X-Api-Key"},
                {"name": "account", "in": "query", "required": False, "secret": False},
            ]
        }
    },
)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"api_key": "schlüssel"}, "api_key"),
        ({"api_key": "good\r\nX-Injected: 1"}, "api_key"),
        ({"api_key": "tab\there"}, "api_key"),
        ({"api_key": "k", "account": "bad\x7f"}, "account"),
    ],
)
def test_values_that_cannot_be_sent_where_the_schema_puts_them_are_refused(
    values: dict[str, str], field: str
) -> None:
    with pytest.raises(ValidationFailed) as raised:
        validate_static_credentials(_provider(WEATHER), values)
    assert raised.value.metadata == {"field": field}
    assert all(value not in raised.value.message for value in values.values())


def test_unicode_is_fine_outside_headers_and_in_basic_auth() -> None:
    accepted = validate_static_credentials(_provider(WEATHER), {"api_key": "k-1", "account": "zoë"})
    assert accepted == {"api_key": "k-1", "account": "zoë"}
    basic = _provider(ProviderSpec(name="legacy", auth_type="basic_auth"))
    assert validate_static_credentials(basic, {"username": "zoë", "password": "pä:ss"})
    with pytest.raises(ValidationFailed) as raised:
        validate_static_credentials(basic, {"username": "a:b", "password": "x"})
    assert raised.value.metadata == {"field": "username"}


def test_rfc9207_support_comes_from_discovery_or_params() -> None:
    document = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize",
        "token_endpoint": f"{ISSUER}/token",
        "jwks_uri": f"{ISSUER}/jwks",
    }
    plain = parse_discovery_document(ISSUER, document, NOW)
    assert not _provider(SALESFORCE_SPEC, plain).sends_iss
    advertised = parse_discovery_document(
        ISSUER, {**document, "authorization_response_iss_parameter_supported": True}, NOW
    )
    assert _provider(SALESFORCE_SPEC, advertised).sends_iss
    with pytest.raises(DiscoveryDocumentInvalid):
        parse_discovery_document(
            ISSUER, {**document, "authorization_response_iss_parameter_supported": "yes"}, NOW
        )
    by_param = replace(
        SALESFORCE_SPEC,
        issuer=ISSUER,
        params={"authorization_response_iss_parameter_supported": True},
    )
    assert _provider(validate_spec(by_param, has_secret=True)).sends_iss


def test_requiring_iss_needs_an_issuer_to_compare_with() -> None:
    spec = replace(SALESFORCE_SPEC, params={"authorization_response_iss_parameter_supported": True})
    with pytest.raises(ValidationFailed) as raised:
        validate_spec(spec, has_secret=True)
    assert raised.value.metadata == {"field": "issuer"}
