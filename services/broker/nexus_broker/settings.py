"""Broker settings, read from ``NEXUS_*`` environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nexus_common import ApiKeySet, Env, Keyring

__all__ = ["BrokerSettings"]


@dataclass(frozen=True)
class BrokerSettings:
    listen: str
    database_url: str
    keyring: Keyring
    internal_tokens: ApiKeySet
    discovery_timeout_seconds: float
    discovery_retry_seconds: float
    discovery_max_age_seconds: float
    auto_migrate: bool
    shutdown_grace_seconds: float
    log_level: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> BrokerSettings:
        env = Env(environ)
        return cls(
            listen=env.text("NEXUS_BROKER_LISTEN", "127.0.0.1:50061"),
            database_url=env.database_url("NEXUS_BROKER_DATABASE_URL"),
            keyring=Keyring.from_spec(env.text("NEXUS_KEYRING")),
            internal_tokens=ApiKeySet(env.internal_tokens()[1]),
            discovery_timeout_seconds=env.number("NEXUS_DISCOVERY_TIMEOUT_SECONDS", 5.0),
            discovery_retry_seconds=env.number("NEXUS_DISCOVERY_RETRY_SECONDS", 30.0),
            discovery_max_age_seconds=env.number("NEXUS_DISCOVERY_MAX_AGE_SECONDS", 86400.0),
            auto_migrate=env.flag("NEXUS_AUTO_MIGRATE", True),
            shutdown_grace_seconds=env.number("NEXUS_SHUTDOWN_GRACE_SECONDS", 10.0),
            log_level=env.text("NEXUS_LOG_LEVEL", "INFO"),
        )
