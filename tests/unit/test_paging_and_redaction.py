from __future__ import annotations

import pytest
from nexus_common import (
    InvalidArgument,
    InvalidPageToken,
    decode_page_token,
    encode_page_token,
    page_size,
    redact,
)


def test_page_token_round_trips_for_the_same_query() -> None:
    token = encode_page_token(["salesforce", "id-1"], {"category": "crm"})
    assert decode_page_token(token, {"category": "crm"}) == ["salesforce", "id-1"]
    assert decode_page_token("", {"category": "crm"}) is None


@pytest.mark.parametrize("token", ["garbage", "e30", "!!!"])
def test_garbage_page_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidPageToken):
        decode_page_token(token, {})


def test_page_token_is_refused_with_other_filters() -> None:
    token = encode_page_token(["a", "b"], {"category": "crm"})
    with pytest.raises(InvalidPageToken):
        decode_page_token(token, {"category": "calendar"})


def test_page_size_defaults_and_is_capped() -> None:
    assert page_size(0) == 50
    assert page_size(1000) == 100
    with pytest.raises(InvalidArgument):
        page_size(-1)


def test_redaction_hides_secret_named_values_at_any_depth() -> None:
    redacted = redact(
        {
            "client_secret": "s",
            "token_url": "https://x/token",
            "params": {"api_key": "k", "fields": [{"password": "p", "label": "Password"}]},
            "access_token": "t",
        }
    )
    assert redacted == {
        "client_secret": "[REDACTED]",
        "token_url": "https://x/token",
        "params": {
            "api_key": "[REDACTED]",
            "fields": [{"password": "[REDACTED]", "label": "Password"}],
        },
        "access_token": "[REDACTED]",
    }
