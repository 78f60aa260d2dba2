"""Policy service settings, read from ``NEXUS_*`` environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nexus_common import ApiKeySet, Env

__all__ = ["PolicySettings"]


@dataclass(frozen=True)
class PolicySettings:
    listen: str
    internal_tokens: ApiKeySet
    shutdown_grace_seconds: float
    log_level: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> PolicySettings:
        env = Env(environ)
        return cls(
            listen=env.text("NEXUS_POLICY_LISTEN", "127.0.0.1:50071"),
            internal_tokens=ApiKeySet(env.internal_tokens()[1]),
            shutdown_grace_seconds=env.number("NEXUS_SHUTDOWN_GRACE_SECONDS", 10.0),
            log_level=env.text("NEXUS_LOG_LEVEL", "INFO"),
        )
