"""Applying a token's strategy to a request, and the Bridge's retry spacing."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nexus_sdk import TokenPayload, UnsupportedStrategy, apply_credentials
from nexus_sdk.bridge import RetryPolicy


def test_oauth2_is_a_bearer_header() -> None:
    token = TokenPayload({"type": "oauth2"}, {"access_token": "at-1", "expires_at": 1}, 1)
    applied = apply_credentials(token)
    assert applied.headers == {"Authorization": "Bearer at-1"}
    assert applied.query == {} and applied.body == {}
    assert "at-1" not in repr(applied)


def test_basic_auth_is_a_basic_header() -> None:
    token = TokenPayload({"type": "basic_auth"}, {"username": "ana", "password": "p:w"}, None)
    scheme, encoded = apply_credentials(token).headers["Authorization"].split()
    assert scheme == "Basic" and base64.b64decode(encoded) == b"ana:p:w"


def test_api_key_fields_go_where_the_schema_says() -> None:
    strategy = {
        "type": "api_key",
        "fields": [
            {"name": "api_key", "in": "header", "key": "X-API-Key"},
            {"name": "account", "in": "query", "key": "acct"},
            {"name": "signature", "in": "body", "key": "sig"},
        ],
    }
    token = TokenPayload(strategy, {"api_key": "k", "account": "42", "signature": "s"}, None)
    applied = apply_credentials(token)
    assert applied.headers == {"X-API-Key": "k"}
    assert applied.query == {"acct": "42"}
    assert applied.body == {"sig": "s"}


@pytest.mark.parametrize(
    "strategy",
    [
        {"type": "aws_sigv4"},
        {"type": "api_key", "fields": [{"name": "k", "in": "cookie", "key": "k"}]},
    ],
)
def test_a_strategy_not_known_here_is_refused(strategy: dict[str, object]) -> None:
    with pytest.raises(UnsupportedStrategy):
        apply_credentials(TokenPayload(strategy, {"k": "v"}, None))


@given(st.integers(min_value=1, max_value=10**6))
def test_backoff_doubles_up_to_its_cap_plus_jitter(failures: int) -> None:
    policy = RetryPolicy(min_backoff=0.5, max_backoff=8.0, jitter=0.25)
    base = min(8.0, 0.5 * 2 ** min(failures - 1, 10))
    assert base <= policy.delay(failures) <= base + 0.25
