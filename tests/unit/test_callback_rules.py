"""Pure rules behind the callback and the capture page: the return origin put
into the capture page's CSP, values that cannot travel where a schema sends
them, and RFC 9207 support read from discovery and params."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
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
    origin = origin_of(url)
    assert not any(ch in origin for ch in " ;,'\"\t*%")
    if ReturnUrlPolicy(["https://*.example.com"]).allows(url):
        assert origin.endswith(".example.com")


POLICY = ReturnUrlPolicy(["https://*.app.example.com", "https://app.example.com", "http://[::1]:*"])


@pytest.mark.parametrize(
    "url",
    [
        # A browser goes to evil.com: for http(s) a backslash ends the host (WHATWG URL §4.4).
        "https://evil.com\\.app.example.com/cb",
        "https://evil.com\\@app.example.com/cb",
        "https://app.example.com\\@evil.com/cb",
        "https://app.example.com/\\evil.com",
        # Tab and newline are removed by browsers wherever they are.
        "https://evil.com\t.app.example.com/cb",
        "https://evil.com\n.app.example.com/cb",
        "https://app.example.com/cb\r\n",
        " https://app.example.com/cb",
        "https://app.example.com/cb\x00",
        "https://app.example.com/c b",
        "https://app.example.com/cb\x85",
        # User information, even empty, and what urlsplit and browsers split differently.
        "https://@app.example.com/cb",
        "https://:@app.example.com/cb",
        "https://evil.com@app.example.com/cb",
        "https://app.example.com:@evil.com/cb",
        "https://app.example.com:443@evil.com/cb",
        # Hosts a browser would decode or map into something else.
        "https://evil.com%2F.app.example.com/cb",
        "https://evil.com%5C.app.example.com/cb",
        "https://evil\uff0ecom.app.example.com/cb",
        "https://EVIL\u2024app.example.com/cb",
        "https://app.example.com./cb",
        "https://app.example.com:+443/cb",
        "https://app.example.com:/cb",
        "https://app.example.com:99999/cb",
        "https:app.example.com/cb",
        "https:/app.example.com/cb",
        "http://[::1%25eth0]:3000/",
    ],
)
def test_a_return_url_read_differently_by_a_browser_is_refused(url: str) -> None:
    assert not POLICY.allows(url)
    assert origin_of(url) == ""


@pytest.mark.parametrize(
    "url",
    [
        "https://eu.app.example.com/cb?next=%2Fhome#top",
        "HTTPS://EU.App.Example.com:443/cb",
        "https://app.example.com",
        "https://app.example.com?x=1",
        "http://[0:0::1]:3000/done",
    ],
)
def test_a_plain_return_url_is_still_allowed(url: str) -> None:
    assert POLICY.allows(url)


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
