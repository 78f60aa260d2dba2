from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nexus_common import (
    InvalidArgument,
    InvalidPageToken,
    PageTokens,
    page_size,
    redact,
)

PAGES = PageTokens(b"a server secret of enough length!", "broker")


def test_page_token_round_trips_for_the_same_query() -> None:
    token = PAGES.encode(["salesforce", "id-1"], {"category": "crm"})
    assert PAGES.decode(token, {"category": "crm"}) == ["salesforce", "id-1"]
    assert PAGES.decode("", {"category": "crm"}) is None


@pytest.mark.parametrize("token", ["garbage", "e30", "!!!", "e30.", ".", "é.é"])
def test_garbage_page_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidPageToken):
        PAGES.decode(token, {})


def test_page_token_is_refused_with_other_filters() -> None:
    token = PAGES.encode(["a", "b"], {"category": "crm"})
    with pytest.raises(InvalidPageToken):
        PAGES.decode(token, {"category": "calendar"})


def _unsigned(position: object, query: dict[str, str]) -> str:
    """A token as the unsigned format used to be: what a forger can still write."""
    genuine = PAGES.encode(["x"], query)
    fingerprint = json.loads(base64.urlsafe_b64decode(genuine.split(".")[0] + "=="))["q"]
    payload = json.dumps({"p": position, "q": fingerprint}).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


@pytest.mark.parametrize("position", [["not a date", 1], [{"a": 1}], [], "text", None])
def test_a_forged_position_is_refused_before_it_is_read(position: object) -> None:
    forged = _unsigned(position, {"category": "crm"})
    for token in (forged, forged + ".AAAAAAAAAAAAAAAAAAAAAA", forged + "." + forged):
        with pytest.raises(InvalidPageToken):
            PAGES.decode(token, {"category": "crm"})


def test_another_service_or_key_cannot_read_a_token() -> None:
    token = PAGES.encode(["a"], {})
    for other in (
        PageTokens(b"a server secret of enough length!", "policy"),
        PageTokens(b"another server secret, as long...", "broker"),
    ):
        with pytest.raises(InvalidPageToken):
            other.decode(token, {})


@given(st.text(max_size=300))
def test_any_text_is_a_page_token_or_refused_with_a_reason(token: str) -> None:
    try:
        position = PAGES.decode(token, {"workspace_id": "w"})
    except InvalidPageToken as error:
        assert error.metadata == {"field": "page_token"}
    else:
        assert position is None and token == ""


@given(
    st.lists(st.one_of(st.text(), st.integers(), st.booleans()), max_size=5),
    st.integers(min_value=0, max_value=200),
    st.integers(min_value=0, max_value=7),
)
def test_any_change_to_a_token_is_caught(position: list[object], at: int, bit: int) -> None:
    token = PAGES.encode(position, {"resource": "r"})
    assert PAGES.decode(token, {"resource": "r"}) == position
    index = at % len(token)
    flipped = chr(ord(token[index]) ^ (1 << bit))
    tampered = token[:index] + flipped + token[index + 1 :]
    if tampered == token:
        return
    try:
        assert PAGES.decode(tampered, {"resource": "r"}) == position
    except InvalidPageToken:
        return
    # Base64 may ignore a flipped padding bit; then the payload must be unchanged.


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
