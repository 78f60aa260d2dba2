from __future__ import annotations

import pytest
from nexus_common import ConfigError
from nexus_gateway.settings import MIN_ADMIN_KEY_LENGTH, GatewaySettings

BASE = {"NEXUS_INTERNAL_TOKEN": "t" * 32, "NEXUS_ALLOW_PLAINTEXT": "true"}
LONG_ENOUGH = "nxa_" + "k" * (MIN_ADMIN_KEY_LENGTH - 4)


def test_admin_keys_of_the_minimum_length_are_accepted() -> None:
    settings = GatewaySettings.from_env(
        BASE | {"NEXUS_ADMIN_API_KEYS": f"ops:{LONG_ENOUGH},ci:{LONG_ENOUGH}x"}
    )
    assert settings.admin_keys.match(LONG_ENOUGH) == "ops"


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (f"ops:{LONG_ENOUGH[:-1]}", "'ops' has 31 characters"),
        (f"ops:{LONG_ENOUGH},ci:nxa_short", "'ci' has 9 characters"),
        ("nxa_short", "'key1' has 9 characters"),
    ],
)
def test_a_short_admin_key_refuses_to_start_and_is_not_shown(spec: str, named: str) -> None:
    with pytest.raises(ConfigError, match="NEXUS_ADMIN_API_KEYS") as refused:
        GatewaySettings.from_env(BASE | {"NEXUS_ADMIN_API_KEYS": spec})
    assert named in str(refused.value) and "at least 32" in str(refused.value)
    assert "nxa_short" not in str(refused.value)
    assert LONG_ENOUGH[:-1] not in str(refused.value)


def test_unknown_keys_are_remembered_ten_seconds_unless_set() -> None:
    keys = {"NEXUS_ADMIN_API_KEYS": f"ops:{LONG_ENOUGH}"}
    assert GatewaySettings.from_env(BASE | keys).unknown_key_cache_seconds == 10
    off = GatewaySettings.from_env(BASE | keys | {"NEXUS_UNKNOWN_KEY_CACHE_SECONDS": "0"})
    assert off.unknown_key_cache_seconds == 0
    with pytest.raises(ConfigError, match="NEXUS_UNKNOWN_KEY_CACHE_SECONDS"):
        GatewaySettings.from_env(BASE | keys | {"NEXUS_UNKNOWN_KEY_CACHE_SECONDS": "301"})
