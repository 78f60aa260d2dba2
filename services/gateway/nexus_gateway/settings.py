"""Gateway settings, read from ``NEXUS_*`` environment variables."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from nexus_common import (
    PEER_SILENCE_SECONDS,
    ApiKeySet,
    CallerProofs,
    ConfigError,
    Env,
    ServerTls,
    ServiceTls,
)

__all__ = ["MIN_ADMIN_KEY_LENGTH", "GatewaySettings"]

# An admin key reads and changes everything but secrets, and is checked by
# length alone: 32 characters of base64url carry 192 bits, as many as
# `secrets.token_urlsafe(24)` makes (the dev stack's keys are 36, nxa_ and 32).
MIN_ADMIN_KEY_LENGTH = 32
_MAKE_ONE = "make one with: python -c \"import secrets; print('nxa_' + secrets.token_urlsafe(32))\""

# As the broker's provider names.
_PROVIDER_NAME = re.compile(r"[a-z0-9-]+")
# Held by services outside Nexus, so never short enough to guess.
_MIN_RESOURCE_SERVER_KEY = 32


@dataclass(frozen=True)
class GatewaySettings:
    listen: str
    http_listen: str
    # Where browsers reach Envoy; https makes the binding cookie __Host- and Secure.
    public_base_url: str
    admin_keys: ApiKeySet
    # Named by the provider whose session tokens each key may introspect.
    resource_server_keys: ApiKeySet
    internal_token: str = field(repr=False)
    broker_target: str
    policy_target: str
    upstream_timeout_seconds: float
    shutdown_grace_seconds: float
    log_level: str
    metrics_listen: str
    # NEXUS_CACHE_MAX_AGE_SECONDS: the backstop age of a remembered agent key
    # (0: none). The policy's change feed, not this, keeps the cache right.
    cache_max_age_seconds: float = 60.0
    # NEXUS_TLS_*: the certificate the gateway presents to broker and policy
    # (None: plaintext, `make run`).
    tls: ServiceTls | None = field(default=None, repr=False)
    # NEXUS_GATEWAY_TLS_*: TLS on the public gRPC listener and the browser pages'
    # HTTP listener (None: plaintext).
    public_tls: ServerTls | None = field(default=None, repr=False)
    # Proves to broker and policy the caller each call is for.
    caller_proofs: CallerProofs = field(default_factory=lambda: CallerProofs(""), repr=False)
    # NEXUS_HEALTH_LISTEN: the health service alone, in plaintext, for probes.
    health_listen: str = ""
    # NEXUS_UNKNOWN_KEY_CACHE_SECONDS: how long a key the policy service did
    # not know is refused without asking again (0: always ask). Short, since
    # it bounds only a refusal whose agent change went unheard; any change
    # heard forgets every refusal at once.
    unknown_key_cache_seconds: float = 10.0
    # Silence that makes the policy's change feed a gap (caching off) and
    # sends a keepalive ping on a connection to another service.
    peer_silence_seconds: float = PEER_SILENCE_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GatewaySettings:
        env = Env(environ)
        try:
            admin_keys = ApiKeySet.from_spec(
                env.text("NEXUS_ADMIN_API_KEYS"), min_length=MIN_ADMIN_KEY_LENGTH
            )
        except ValueError as exc:
            raise ConfigError(f"NEXUS_ADMIN_API_KEYS: {exc} ({_MAKE_ONE})") from None
        if not admin_keys:
            raise ConfigError("NEXUS_ADMIN_API_KEYS must name at least one key")
        return cls(
            listen=env.text("NEXUS_GATEWAY_LISTEN", "127.0.0.1:50051"),
            http_listen=env.text("NEXUS_GATEWAY_HTTP_LISTEN", "127.0.0.1:8081"),
            public_base_url=env.text("NEXUS_PUBLIC_BASE_URL", "http://127.0.0.1:8080"),
            admin_keys=admin_keys,
            resource_server_keys=_resource_server_keys(env),
            internal_token=env.internal_tokens()[0],
            broker_target=env.text("NEXUS_BROKER_TARGET", "127.0.0.1:50061"),
            policy_target=env.text("NEXUS_POLICY_TARGET", "127.0.0.1:50071"),
            upstream_timeout_seconds=env.number("NEXUS_UPSTREAM_TIMEOUT_SECONDS", 30.0),
            shutdown_grace_seconds=env.number("NEXUS_SHUTDOWN_GRACE_SECONDS", 10.0),
            log_level=env.text("NEXUS_LOG_LEVEL", "INFO"),
            metrics_listen=env.address("NEXUS_METRICS_LISTEN", ""),
            cache_max_age_seconds=env.seconds(
                "NEXUS_CACHE_MAX_AGE_SECONDS", 60.0, low=0, high=3600
            ),
            tls=ServiceTls.from_env(env),
            public_tls=ServerTls.from_env(
                env, "NEXUS_GATEWAY_TLS_CERT_FILE", "NEXUS_GATEWAY_TLS_KEY_FILE"
            ),
            caller_proofs=CallerProofs(env.internal_tokens()[0]),
            health_listen=env.address("NEXUS_HEALTH_LISTEN", ""),
            unknown_key_cache_seconds=env.seconds(
                "NEXUS_UNKNOWN_KEY_CACHE_SECONDS", 10.0, low=0, high=300
            ),
            peer_silence_seconds=env.peer_silence_seconds(),
        )


def _resource_server_keys(env: Env) -> ApiKeySet:
    """``provider:key,...``; a provider may be named twice while its key rotates."""
    pairs: list[tuple[str, str]] = []
    spec = env.text("NEXUS_RESOURCE_SERVER_KEYS", "")
    for item in filter(None, (part.strip() for part in spec.split(","))):
        provider, _, key = item.partition(":")
        if not _PROVIDER_NAME.fullmatch(provider) or len(key) < _MIN_RESOURCE_SERVER_KEY:
            raise ConfigError(
                "NEXUS_RESOURCE_SERVER_KEYS entries look like '<provider name>:<key>',"
                f" with keys of at least {_MIN_RESOURCE_SERVER_KEY} characters"
            )
        pairs.append((provider, key))
    return ApiKeySet(pairs)
