"""In production every service needs its certificates: without them the internal
token alone would let anyone on the pod network claim any caller. Development
(`make run`) and an explicit opt-out (a service mesh) run in plaintext."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nexus_broker.settings import BrokerSettings
from nexus_common import ConfigError, generate_key_spec
from nexus_gateway.settings import GatewaySettings
from nexus_policy.settings import PolicySettings

from tools.devcerts import write_set

BASE = {
    "NEXUS_INTERNAL_TOKEN": "t" * 32,
    "NEXUS_BROKER_DATABASE_URL": "sqlite://",
    "NEXUS_POLICY_DATABASE_URL": "sqlite://",
    "NEXUS_KEYRING": generate_key_spec(1),
    "NEXUS_STATE_KEY": "s" * 32,
    "NEXUS_ADMIN_API_KEYS": "ops:nxa_admin_key_0123456789abcdefghijkl",
}
SETTINGS: list[Any] = [BrokerSettings, PolicySettings, GatewaySettings]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    write_set(directory)
    return directory


def _mutual(certs: Path, service: str) -> dict[str, str]:
    return {
        "NEXUS_TLS_CERT_FILE": str(certs / f"{service}.pem"),
        "NEXUS_TLS_KEY_FILE": str(certs / f"{service}-key.pem"),
        "NEXUS_TLS_CA_FILE": str(certs / "ca.pem"),
    }


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s.__name__)
def test_production_refuses_to_start_without_mutual_tls(settings: Any) -> None:
    with pytest.raises(ConfigError) as refused:
        settings.from_env(BASE)
    assert "NEXUS_TLS_CERT_FILE" in str(refused.value)
    assert "NEXUS_ALLOW_PLAINTEXT=true" in str(refused.value)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s.__name__)
@pytest.mark.parametrize(
    "extra",
    [{"NEXUS_ENVIRONMENT": "development"}, {"NEXUS_ALLOW_PLAINTEXT": "true"}],
    ids=["development", "opted-out"],
)
def test_plaintext_runs_in_development_or_when_opted_out(
    settings: Any, extra: dict[str, str]
) -> None:
    assert settings.from_env(BASE | extra).tls is None


def test_the_opt_out_is_a_flag_not_any_value() -> None:
    with pytest.raises(ConfigError, match="NEXUS_ALLOW_PLAINTEXT"):
        BrokerSettings.from_env(BASE | {"NEXUS_ALLOW_PLAINTEXT": "false"})


def test_the_gateway_needs_its_public_certificate_too(certs: Path) -> None:
    mutual = BASE | _mutual(certs, "gateway")
    with pytest.raises(ConfigError, match="NEXUS_GATEWAY_TLS_CERT_FILE"):
        GatewaySettings.from_env(mutual)
    public = {
        "NEXUS_GATEWAY_TLS_CERT_FILE": str(certs / "gateway.pem"),
        "NEXUS_GATEWAY_TLS_KEY_FILE": str(certs / "gateway-key.pem"),
    }
    settings = GatewaySettings.from_env(mutual | public)
    assert settings.tls is not None and settings.public_tls is not None


@pytest.mark.parametrize(
    ("settings", "service"),
    [(BrokerSettings, "broker"), (PolicySettings, "policy")],
    ids=["broker", "policy"],
)
def test_with_its_certificates_a_service_starts_in_production(
    settings: Any, service: str, certs: Path
) -> None:
    assert settings.from_env(BASE | _mutual(certs, service)).tls is not None
