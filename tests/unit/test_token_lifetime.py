"""RFC 6749 §5.1 ``expires_in`` as providers really send it, hostile ones included."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nexus_broker.adapters.rfc6749 import TokenEndpoint, TokenEndpointError
from nexus_broker.domain.connections import MAX_TOKEN_LIFETIME, token_lifetime

NOW = datetime(2025, 5, 6, 12, 0, tzinfo=UTC)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(JSON_VALUES)
def test_any_expires_in_is_a_bounded_lifetime_or_refused(value: object) -> None:
    try:
        lifetime = token_lifetime(value)
    except ValueError:
        return
    assert lifetime is None or timedelta(0) <= lifetime <= MAX_TOKEN_LIFETIME
    # Whatever was accepted is a date Python can still hold a century on.
    assert (NOW + (lifetime or timedelta(0))).year < 9999


@given(st.integers(min_value=0) | st.floats(min_value=0, allow_nan=False))
def test_every_non_negative_number_is_accepted_and_capped(value: float) -> None:
    lifetime = token_lifetime(value)
    assert lifetime is not None
    assert lifetime == min(timedelta(seconds=min(value, 1e12)), MAX_TOKEN_LIFETIME)


@given(st.integers(max_value=-1) | st.floats(max_value=-1e-9) | st.just(math.nan))
def test_negative_and_nan_are_refused(value: float) -> None:
    with pytest.raises(ValueError):
        token_lifetime(value)


@pytest.mark.parametrize("text", ["inf", "Infinity", "NaN", "-1", "0x10", "1_000", "١٢", " "])
def test_text_that_is_not_a_decimal_number_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        token_lifetime(text)


def test_absent_means_unknown() -> None:
    assert token_lifetime(None) is None and token_lifetime("") is None


def _answer(body: bytes) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    "body",
    [
        b'{"access_token": "t", "expires_in": 1e400}',
        b'{"access_token": "t", "expires_in": 1' + b"0" * 500 + b"}",
        b'{"access_token": "t", "expires_in": "1e400"}',
    ],
    ids=["float-literal", "500-digit-int", "text"],
)
def test_a_huge_literal_in_a_token_response_is_capped(body: bytes) -> None:
    tokens = TokenEndpoint._token_set(TokenEndpoint._read(_answer(body), body, NOW), NOW)
    assert tokens.expires_at == NOW + MAX_TOKEN_LIFETIME


@pytest.mark.parametrize(
    "body",
    [
        b'{"access_token": "t", "expires_in": NaN}',
        b'{"access_token": "t", "expires_in": Infinity}',
        b'{"access_token": "t", "expires_in": -3600}',
        b'{"access_token": "t", "expires_in": true}',
        b"[" * 100_000,
    ],
    ids=["NaN", "Infinity", "negative", "boolean", "deeply-nested"],
)
def test_a_token_response_with_nonsense_is_a_provider_error(body: bytes) -> None:
    with pytest.raises(TokenEndpointError) as caught:
        TokenEndpoint._token_set(TokenEndpoint._read(_answer(body), body, NOW), NOW)
    assert not caught.value.transient
    assert json.dumps(caught.value.message)  # a plain sentence, never the body
    assert b"3600" not in caught.value.message.encode()
