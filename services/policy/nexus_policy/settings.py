"""Policy service settings, read from ``NEXUS_*`` environment variables.

The customer's backend is configured with ``BACKEND_AUTH_URL``, the name the
product docs use (``NEXUS_BACKEND_AUTH_URL`` takes precedence when both are
set). Without it, on-behalf-of sessions are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from nexus_common import (
    DEFAULT_MAX_BODY_BYTES,
    ApiKeySet,
    CallerProofs,
    ConfigError,
    Deployment,
    Env,
    OutboundPolicy,
    ServiceTls,
)

__all__ = ["BackendAuthSettings", "PolicySettings", "database_role"]


def database_role(environ: Mapping[str, str]) -> str:
    """``NEXUS_POLICY_DATABASE_ROLE``: the PostgreSQL role the policy service runs
    as, to which ``migrate`` grants its tables (empty: grant nothing)."""
    return Env(environ).text("NEXUS_POLICY_DATABASE_ROLE", "")


@dataclass(frozen=True)
class BackendAuthSettings:
    # May hold credentials (user:password@ or a key in the query).
    url: str = field(repr=False)
    timeout_seconds: float
    cache_seconds: float
    # Local verification of user tokens before asking the backend; all or none.
    token_issuer: str
    token_audience: str
    token_jwks_uri: str
    jwks_min_refetch_seconds: float = 30.0
    # NEXUS_USER_ID_IS_WORKSPACE: a user also owns the workspace named by their
    # user_id. On in development (the docs' walkthrough), off in production,
    # where only the backend's `workspaces` grant ownership.
    user_id_is_workspace: bool = False


@dataclass(frozen=True)
class PolicySettings:
    listen: str
    # May hold a database password.
    database_url: str = field(repr=False)
    auto_migrate: bool
    internal_tokens: ApiKeySet
    internal_token: str = field(repr=False)
    broker_target: str
    audit_forward_interval_seconds: float
    backend_auth: BackendAuthSettings | None
    shutdown_grace_seconds: float
    log_level: str
    metrics_listen: str
    # NEXUS_ENVIRONMENT=development: agents without bindings reach everything.
    allow_unbound_agents: bool
    # NEXUS_CACHE_MAX_AGE_SECONDS: the backstop age of a cached agent (0: no cache).
    # Change notices, not this, keep the cache right.
    cache_max_age_seconds: float
    # NEXUS_LISTENER_HEARTBEAT_SECONDS: how soon a dead LISTEN connection is
    # found (within twice this); agents are not cached, and watches end, until
    # it is heard again.
    listener_heartbeat_seconds: float
    # Silence on a connection to another service that sends a keepalive ping.
    peer_silence_seconds: float
    # Where BACKEND_AUTH_URL and the user tokens' JWKS may be; each call's total deadline.
    outbound: OutboundPolicy
    # NEXUS_TLS_*: mutual TLS with the other services (None: plaintext, `make run`).
    tls: ServiceTls | None = field(default=None, repr=False)
    # Checks the gateway's proof of the caller it forwards.
    caller_proofs: CallerProofs = field(default_factory=lambda: CallerProofs(""), repr=False)
    # NEXUS_HEALTH_LISTEN: the health service alone, in plaintext, for probes.
    health_listen: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> PolicySettings:
        env = Env(environ)
        backend_auth = _backend_auth(env)
        current, accepted = env.internal_tokens()
        return cls(
            listen=env.text("NEXUS_POLICY_LISTEN", "127.0.0.1:50071"),
            database_url=env.database_url("NEXUS_POLICY_DATABASE_URL"),
            auto_migrate=env.flag("NEXUS_AUTO_MIGRATE", True),
            internal_tokens=ApiKeySet(env.internal_tokens()[1]),
            internal_token=env.internal_tokens()[0],
            broker_target=env.text("NEXUS_BROKER_TARGET", "127.0.0.1:50061"),
            audit_forward_interval_seconds=env.number("NEXUS_AUDIT_FORWARD_INTERVAL_SECONDS", 1.0),
            backend_auth=backend_auth,
            shutdown_grace_seconds=env.number("NEXUS_SHUTDOWN_GRACE_SECONDS", 10.0),
            log_level=env.text("NEXUS_LOG_LEVEL", "INFO"),
            metrics_listen=env.address("NEXUS_METRICS_LISTEN", ""),
            allow_unbound_agents=env.deployment() == Deployment.DEVELOPMENT,
            cache_max_age_seconds=_cache_max_age(env),
            listener_heartbeat_seconds=env.listener_heartbeat_seconds(),
            peer_silence_seconds=env.peer_silence_seconds(),
            outbound=OutboundPolicy.parse(
                allowed_networks=env.text("NEXUS_OUTBOUND_ALLOWED_NETWORKS", ""),
                denied_ports=env.text("NEXUS_OUTBOUND_DENIED_PORTS", ""),
                max_body_bytes=env.integer("NEXUS_OUTBOUND_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
                deadline_seconds=backend_auth.timeout_seconds if backend_auth else 10.0,
            ),
            tls=ServiceTls.from_env(env),
            caller_proofs=CallerProofs(current, accepted.values()),
            health_listen=env.address("NEXUS_HEALTH_LISTEN", ""),
        )


def _cache_max_age(env: Env) -> float:
    # NEXUS_POLICY_AGENT_CACHE_SECONDS, this setting's earlier name, is still honoured.
    earlier = env.seconds("NEXUS_POLICY_AGENT_CACHE_SECONDS", 60.0, low=0, high=3600)
    return env.seconds("NEXUS_CACHE_MAX_AGE_SECONDS", earlier, low=0, high=3600)


def _backend_auth(env: Env) -> BackendAuthSettings | None:
    url = env.text("NEXUS_BACKEND_AUTH_URL", env.text("BACKEND_AUTH_URL", ""))
    if not url:
        return None
    if not url.startswith(("https://", "http://")):
        raise ConfigError("BACKEND_AUTH_URL must be an http(s) URL")
    timeout = env.number("NEXUS_BACKEND_AUTH_TIMEOUT_SECONDS", 3.0)
    if not 0 < timeout <= 60:
        raise ConfigError("NEXUS_BACKEND_AUTH_TIMEOUT_SECONDS must be between 0 and 60")
    local = (
        env.text("NEXUS_USER_TOKEN_ISSUER", ""),
        env.text("NEXUS_USER_TOKEN_AUDIENCE", ""),
        env.text("NEXUS_USER_TOKEN_JWKS_URI", ""),
    )
    if any(local) and not all(local):
        raise ConfigError(
            "set all of NEXUS_USER_TOKEN_ISSUER, NEXUS_USER_TOKEN_AUDIENCE and "
            "NEXUS_USER_TOKEN_JWKS_URI to verify user tokens locally, or none"
        )
    return BackendAuthSettings(
        url=url,
        timeout_seconds=timeout,
        cache_seconds=max(0.0, env.number("NEXUS_BACKEND_AUTH_CACHE_SECONDS", 30.0)),
        token_issuer=local[0],
        token_audience=local[1],
        token_jwks_uri=local[2],
        jwks_min_refetch_seconds=env.jwks_min_refetch_seconds(),
        user_id_is_workspace=env.flag(
            "NEXUS_USER_ID_IS_WORKSPACE", env.deployment() == Deployment.DEVELOPMENT
        ),
    )
