from __future__ import annotations

import pytest
from nexus_broker.settings import BrokerSettings
from nexus_common import ConfigError, generate_key_spec

BASE = {
    "NEXUS_INTERNAL_TOKEN": "t" * 32,
    "NEXUS_BROKER_DATABASE_URL": "sqlite://",
    "NEXUS_KEYRING": generate_key_spec(1),
    "NEXUS_STATE_KEY": "s" * 32,
    "NEXUS_ALLOW_PLAINTEXT": "true",
}


def test_the_refresh_lease_is_thirty_seconds_unless_set() -> None:
    assert BrokerSettings.from_env(BASE).refresh_lease_seconds == 30
    lease = BrokerSettings.from_env(BASE | {"NEXUS_REFRESH_LEASE_SECONDS": "2.5"})
    assert lease.refresh_lease_seconds == 2.5


@pytest.mark.parametrize("value", ["0", "0.5", "-3", "nan", "inf", "3601", "soon"])
def test_a_refresh_lease_out_of_range_refuses_to_start(value: str) -> None:
    with pytest.raises(ConfigError, match="NEXUS_REFRESH_LEASE_SECONDS"):
        BrokerSettings.from_env(BASE | {"NEXUS_REFRESH_LEASE_SECONDS": value})


def test_the_refresh_loop_has_sixteen_provider_calls_in_flight_unless_set() -> None:
    assert BrokerSettings.from_env(BASE).refresh_concurrency == 16
    loop = BrokerSettings.from_env(BASE | {"NEXUS_REFRESH_CONCURRENCY": "64"})
    assert loop.refresh_concurrency == 64


@pytest.mark.parametrize("value", ["0", "-1", "501", "2.5", "many"])
def test_a_refresh_concurrency_out_of_range_refuses_to_start(value: str) -> None:
    with pytest.raises(ConfigError, match="NEXUS_REFRESH_CONCURRENCY"):
        BrokerSettings.from_env(BASE | {"NEXUS_REFRESH_CONCURRENCY": value})


def test_the_caches_and_the_audit_batches_have_their_defaults_unless_set() -> None:
    defaults = BrokerSettings.from_env(BASE)
    assert (defaults.cache_max_age_seconds, defaults.audit_batch_max) == (10, 256)
    assert defaults.listener_heartbeat_seconds == 2
    # The backstop stays above the bound the heartbeat puts on a dead listener.
    assert defaults.cache_max_age_seconds > 2 * defaults.listener_heartbeat_seconds
    off = BrokerSettings.from_env(
        BASE
        | {
            "NEXUS_CACHE_MAX_AGE_SECONDS": "0",
            "NEXUS_AUDIT_BATCH_MAX": "1",
            "NEXUS_LISTENER_HEARTBEAT_SECONDS": "0.5",
        }
    )
    assert (off.cache_max_age_seconds, off.audit_batch_max) == (0, 1)
    assert off.listener_heartbeat_seconds == 0.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NEXUS_CACHE_MAX_AGE_SECONDS", "-1"),
        ("NEXUS_CACHE_MAX_AGE_SECONDS", "3601"),
        ("NEXUS_CACHE_MAX_AGE_SECONDS", "nan"),
        ("NEXUS_CACHE_MAX_AGE_SECONDS", "forever"),
        ("NEXUS_AUDIT_BATCH_MAX", "0"),
        ("NEXUS_AUDIT_BATCH_MAX", "10001"),
        ("NEXUS_AUDIT_BATCH_MAX", "lots"),
        ("NEXUS_LISTENER_HEARTBEAT_SECONDS", "0"),
        ("NEXUS_LISTENER_HEARTBEAT_SECONDS", "61"),
        ("NEXUS_LISTENER_HEARTBEAT_SECONDS", "often"),
    ],
)
def test_a_cache_age_or_batch_size_out_of_range_refuses_to_start(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        BrokerSettings.from_env(BASE | {name: value})


def test_the_highest_key_seals_unless_nexus_keyring_primary_names_another() -> None:
    keys = {"NEXUS_KEYRING": f"{generate_key_spec(1)},{generate_key_spec(2)}"}
    assert BrokerSettings.from_env(BASE | keys).keyring.primary == 2
    held_back = BrokerSettings.from_env(BASE | keys | {"NEXUS_KEYRING_PRIMARY": "1"})
    assert held_back.keyring.primary == 1


@pytest.mark.parametrize("value", ["3", "0", "-1", "two", "1.0"])
def test_a_keyring_primary_not_in_the_keyring_refuses_to_start(value: str) -> None:
    keys = {"NEXUS_KEYRING": f"{generate_key_spec(1)},{generate_key_spec(2)}"}
    with pytest.raises(ConfigError, match="NEXUS_KEYRING_PRIMARY"):
        BrokerSettings.from_env(BASE | keys | {"NEXUS_KEYRING_PRIMARY": value})
