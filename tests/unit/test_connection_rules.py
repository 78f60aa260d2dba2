from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from nexus_broker.domain.connections import Connection, ConnectionStatus, RefreshPolicy, TokenSet
from nexus_broker.domain.return_urls import ReturnUrlPolicy, append_query
from nexus_broker.domain.rfc7636 import code_challenge, new_code_verifier
from nexus_broker.domain.state import StateSigner
from nexus_broker.settings import BrokerSettings
from nexus_common import ConfigError, StateInvalid

from tests.conftest import service_env

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
KEY = b"k" * 32


def test_pkce_s256_matches_rfc7636_appendix_b() -> None:
    assert code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == (
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )
    verifier = new_code_verifier()
    assert 43 <= len(verifier) <= 128


def test_state_is_genuine_expiring_and_tamper_evident() -> None:
    signer = StateSigner(KEY)
    issued = signer.issue(NOW + timedelta(minutes=10))
    assert signer.verify(issued.token, NOW) == issued.attempt_id
    with pytest.raises(StateInvalid, match="expired"):
        signer.verify(issued.token, NOW + timedelta(minutes=11))
    with pytest.raises(StateInvalid, match="not genuine"):
        StateSigner(b"x" * 32).verify(issued.token, NOW)
    attempt, expiry, mac = issued.token.split(".")
    with pytest.raises(StateInvalid, match="not genuine"):
        signer.verify(f"{attempt}.{int(expiry) + 3600}.{mac}", NOW)
    for garbage in ("", "abc", "a.b.c", issued.token + "x"):
        with pytest.raises(StateInvalid):
            signer.verify(garbage, NOW)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://your-app.com/connections/callback", True),
        ("https://your-app.com:443/x", True),
        ("https://your-app.com:8443/x", False),
        ("http://your-app.com/x", False),
        ("https://evil.com/?https://your-app.com", False),
        ("https://your-app.com.evil.com/x", False),
        ("https://eu.tenant.example/x", True),
        ("https://tenant.example/x", False),
        ("https://a.b.tenant.example/x", True),
        ("http://127.0.0.1:51234/done", True),
        ("https://user:pw@your-app.com/x", False),
        ("javascript:alert(1)", False),
        ("//your-app.com/x", False),
    ],
)
def test_return_urls_match_the_allowlist_exactly_or_by_subdomain(url: str, allowed: bool) -> None:
    policy = ReturnUrlPolicy(
        ["https://your-app.com", "https://*.tenant.example", "http://127.0.0.1:*"]
    )
    assert policy.allows(url) is allowed


def test_outcome_is_appended_to_an_existing_query() -> None:
    assert append_query(
        "https://app.example/cb?tab=crm#top", status="success", connection_id="c 1"
    ) == ("https://app.example/cb?tab=crm&status=success&connection_id=c+1#top")


def test_a_non_rotating_refresh_keeps_the_old_refresh_token() -> None:
    old = TokenSet("a1", refresh_token="r1", expires_at=NOW, scope=("read",))
    assert old.after_refresh(TokenSet("a2", expires_at=NOW)).refresh_token == "r1"
    assert old.after_refresh(TokenSet("a2", expires_at=NOW)).scope == ("read",)
    assert old.after_refresh(TokenSet("a2", refresh_token="r2")).refresh_token == "r2"


def test_refresh_is_scheduled_ahead_of_expiry_with_jitter() -> None:
    policy = RefreshPolicy(lead_seconds=300, jitter_seconds=30)
    tokens = TokenSet("a", refresh_token="r", expires_at=NOW + timedelta(hours=1))
    earliest = policy.next_refresh(tokens, NOW, random=1.0)
    latest = policy.next_refresh(tokens, NOW, random=0.0)
    assert latest == NOW + timedelta(minutes=55)
    assert earliest == NOW + timedelta(minutes=54, seconds=30)
    short = TokenSet("a", refresh_token="r", expires_at=NOW + timedelta(seconds=20))
    assert NOW < policy.next_refresh(short, NOW, random=0.5) < short.expires_at  # type: ignore[operator]
    assert policy.next_refresh(TokenSet("a", expires_at=NOW), NOW, 0.5) is None


def test_backoff_grows_with_jitter_and_clamps_retry_after() -> None:
    policy = RefreshPolicy(min_backoff_seconds=5, max_backoff_seconds=900)
    assert policy.backoff(1, None, 0.0) == timedelta(seconds=5)
    assert policy.backoff(1, None, 1.0) == timedelta(seconds=10)
    assert policy.backoff(4, None, 1.0) == timedelta(seconds=80)
    assert policy.backoff(50, None, 1.0) == timedelta(seconds=900)
    assert policy.backoff(1, 0, 0.5) == timedelta(seconds=5)
    assert policy.backoff(1, 86400, 0.5) == timedelta(seconds=900)
    assert policy.backoff(1, 42, 0.5) == timedelta(seconds=42)


def test_an_unfinished_connection_expires() -> None:
    pending = Connection(
        "c",
        "w",
        "p",
        (),
        "https://app",
        ConnectionStatus.PENDING,
        NOW,
        NOW,
        pending_until=NOW + timedelta(minutes=10),
    )
    assert pending.status_at(NOW) == ConnectionStatus.PENDING
    assert pending.status_at(NOW + timedelta(minutes=10)) == ConnectionStatus.EXPIRED


def test_an_unconfirmed_connection_expires_at_its_deadline() -> None:
    unconfirmed = Connection(
        "c",
        "w",
        "p",
        (),
        "https://app",
        ConnectionStatus.UNCONFIRMED,
        NOW,
        NOW,
        pending_until=NOW + timedelta(minutes=10),
    )
    assert unconfirmed.status_at(NOW) == ConnectionStatus.UNCONFIRMED
    assert unconfirmed.status_at(NOW + timedelta(minutes=10)) == ConnectionStatus.EXPIRED


@pytest.mark.parametrize(
    ("environment", "value", "always"),
    [
        ("development", "", False),
        ("production", "", True),
        ("production", "optional", False),
        ("development", "required", True),
        ("production", "Required ", True),
    ],
)
def test_connection_confirmation_is_required_in_production_unless_opted_out(
    environment: str, value: str, always: bool
) -> None:
    env = service_env("sqlite:///unused.db", "1:" + "A" * 43 + "=")
    env["NEXUS_ENVIRONMENT"] = environment
    env["NEXUS_CONNECTION_CONFIRMATION"] = value
    assert BrokerSettings.from_env(env).confirmation_always is always


@pytest.mark.parametrize("value", ["sometimes", "true", "yes"])
def test_connection_confirmation_takes_only_its_two_values(value: str) -> None:
    env = service_env("sqlite:///unused.db", "1:" + "A" * 43 + "=")
    env["NEXUS_CONNECTION_CONFIRMATION"] = value
    with pytest.raises(ConfigError, match="NEXUS_CONNECTION_CONFIRMATION"):
        BrokerSettings.from_env(env)


ACTIVE = Connection(
    id="c1",
    workspace_id="w",
    provider_id="p",
    scopes=("read",),
    return_url="https://app.example/done",
    status=ConnectionStatus.ACTIVE,
    created_at=NOW,
    updated_at=NOW,
)


@pytest.mark.parametrize(
    ("fields", "wait_seconds"),
    [
        ({}, None),
        ({"last_narrowed_at": NOW - timedelta(seconds=10)}, 20),
        ({"last_narrowed_at": NOW - timedelta(seconds=30)}, None),
        # A forced refresh moments ago does not hold a narrowing back, nor the reverse.
        ({"last_refreshed_at": NOW}, None),
        # The provider's backoff holds whoever asks.
        ({"refresh_failures": 1, "next_refresh_at": NOW + timedelta(seconds=300)}, 300),
        ({"refresh_failures": 0, "next_refresh_at": NOW + timedelta(seconds=300)}, None),
    ],
)
def test_a_narrowing_waits_like_a_forced_refresh(
    fields: dict[str, object], wait_seconds: int | None
) -> None:
    policy = RefreshPolicy(forced_interval_seconds=30)
    wait = policy.narrowing_wait(replace(ACTIVE, **fields), NOW)
    assert wait == (None if wait_seconds is None else timedelta(seconds=wait_seconds))
    assert policy.forced_refresh_wait(replace(ACTIVE, last_narrowed_at=NOW), NOW) is None
