"""Broker settings, read from ``NEXUS_*`` environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from nexus_common import (
    DEFAULT_MAX_BODY_BYTES,
    PEER_SILENCE_SECONDS,
    ApiKeySet,
    CallerProofs,
    ConfigError,
    Deployment,
    Env,
    Keyring,
    OutboundPolicy,
    ServiceTls,
)

from .domain.connections import RefreshPolicy
from .domain.sessions import SessionLimits

__all__ = ["BrokerSettings", "database_role"]


def database_role(environ: Mapping[str, str]) -> str:
    """``NEXUS_BROKER_DATABASE_ROLE``: the PostgreSQL role the broker runs as, to
    which ``migrate`` grants the broker's tables (empty: grant nothing)."""
    return Env(environ).text("NEXUS_BROKER_DATABASE_ROLE", "")


@dataclass(frozen=True)
class BrokerSettings:
    listen: str
    # May hold a database password.
    database_url: str = field(repr=False)
    keyring: Keyring = field(repr=False)
    internal_tokens: ApiKeySet
    discovery_timeout_seconds: float
    discovery_retry_seconds: float
    discovery_max_age_seconds: float
    auto_migrate: bool
    shutdown_grace_seconds: float
    log_level: str
    metrics_listen: str
    public_base_url: str
    state_key: bytes = field(repr=False)
    return_url_allowlist: tuple[str, ...]
    connection_ttl_seconds: float
    # NEXUS_CONNECTION_CONFIRMATION=required (production's default): every
    # connection waits for the app's ConfirmConnection, and a request asking not
    # to is refused; optional: only those that ask for it wait.
    confirmation_always: bool
    # NEXUS_ENDPOINT_CONFIRMATION=another_admin: a provider's moved token
    # endpoints are confirmed by another admin key than the one that moved them.
    endpoint_confirmation_by_another_admin: bool
    clock_skew_seconds: float
    provider_timeout_seconds: float
    jwks_min_refetch_seconds: float
    # Where provider calls may go; each takes at most provider_timeout_seconds in all.
    outbound: OutboundPolicy
    refresh: RefreshPolicy
    refresh_loop: bool
    refresh_interval_seconds: float
    refresh_lease_seconds: float
    # Provider calls the refresh loop has in flight at once.
    refresh_concurrency: int
    internal_token: str = field(repr=False)
    policy_target: str
    policy_timeout_seconds: float
    sessions: SessionLimits
    session_issuer: str
    signing_key_rotation_seconds: float
    jwks_cache_seconds: float
    session_retention_seconds: float
    # NEXUS_ENVIRONMENT=development: providers that say nothing may hand
    # sessions tokens broader than asked, and say so.
    broader_session_tokens_by_default: bool
    # The longest a cached row or grant may be served (a backstop: writes and
    # change notices drop entries long before); 0 turns the caches off. 10 s,
    # not the 60 of the other services, because what it bounds here is how
    # long a revoked or rotated credential could still go out were a notice
    # lost in a way nobody foresaw. It costs a hot connection one row read per
    # 10 s per replica, beside the audit row each release writes anyway. It
    # stays above twice the listener's heartbeat (4 s), so that a dead
    # listener is ended by the heartbeat, not by this.
    cache_max_age_seconds: float = 10.0
    # NEXUS_LISTENER_HEARTBEAT_SECONDS: how soon a dead LISTEN connection is
    # found (within twice this); caching is off until it is heard again.
    listener_heartbeat_seconds: float = 2.0
    # Silence that makes the policy's change feed a gap (caching off) and
    # sends a keepalive ping on a connection to another service.
    peer_silence_seconds: float = PEER_SILENCE_SECONDS
    # Most audit rows one group commit writes; as many more may wait for it.
    audit_batch_max: int = 256
    # NEXUS_TLS_*: mutual TLS with the other services (None: plaintext, `make run`).
    tls: ServiceTls | None = field(default=None, repr=False)
    # Checks the gateway's proof of the caller it forwards.
    caller_proofs: CallerProofs = field(default_factory=lambda: CallerProofs(""), repr=False)
    # NEXUS_HEALTH_LISTEN: the health service alone, in plaintext, for probes.
    health_listen: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> BrokerSettings:
        env = Env(environ)
        current, accepted = env.internal_tokens()
        return cls(
            listen=env.text("NEXUS_BROKER_LISTEN", "127.0.0.1:50061"),
            database_url=env.database_url("NEXUS_BROKER_DATABASE_URL"),
            keyring=_keyring(env),
            internal_tokens=ApiKeySet(env.internal_tokens()[1]),
            discovery_timeout_seconds=env.number("NEXUS_DISCOVERY_TIMEOUT_SECONDS", 5.0),
            discovery_retry_seconds=env.number("NEXUS_DISCOVERY_RETRY_SECONDS", 30.0),
            discovery_max_age_seconds=env.number("NEXUS_DISCOVERY_MAX_AGE_SECONDS", 86400.0),
            auto_migrate=env.flag("NEXUS_AUTO_MIGRATE", True),
            shutdown_grace_seconds=env.number("NEXUS_SHUTDOWN_GRACE_SECONDS", 10.0),
            log_level=env.text("NEXUS_LOG_LEVEL", "INFO"),
            metrics_listen=env.address("NEXUS_METRICS_LISTEN", ""),
            public_base_url=env.text("NEXUS_PUBLIC_BASE_URL", "http://127.0.0.1:8080"),
            state_key=_state_key(env.text("NEXUS_STATE_KEY")),
            return_url_allowlist=tuple(
                entry.strip()
                for entry in env.text(
                    "NEXUS_RETURN_URL_ALLOWLIST", "http://localhost:*,http://127.0.0.1:*"
                ).split(",")
                if entry.strip()
            ),
            connection_ttl_seconds=env.number("NEXUS_CONNECTION_TTL_SECONDS", 600.0),
            confirmation_always=_confirmation_always(env),
            clock_skew_seconds=env.seconds("NEXUS_CLOCK_SKEW_SECONDS", 60.0, low=0, high=3600),
            provider_timeout_seconds=env.number("NEXUS_PROVIDER_TIMEOUT_SECONDS", 10.0),
            jwks_min_refetch_seconds=env.jwks_min_refetch_seconds(),
            outbound=_outbound(env, env.number("NEXUS_PROVIDER_TIMEOUT_SECONDS", 10.0)),
            refresh=RefreshPolicy(
                lead_seconds=env.number("NEXUS_REFRESH_LEAD_SECONDS", 300.0),
                jitter_seconds=env.number("NEXUS_REFRESH_JITTER_SECONDS", 30.0),
                min_backoff_seconds=env.number("NEXUS_REFRESH_MIN_BACKOFF_SECONDS", 5.0),
                max_backoff_seconds=env.number("NEXUS_REFRESH_MAX_BACKOFF_SECONDS", 900.0),
                forced_interval_seconds=env.number("NEXUS_FORCED_REFRESH_INTERVAL_SECONDS", 30.0),
            ),
            refresh_loop=env.flag("NEXUS_REFRESH_LOOP", True),
            refresh_interval_seconds=env.number("NEXUS_REFRESH_INTERVAL_SECONDS", 5.0),
            refresh_lease_seconds=env.seconds(
                "NEXUS_REFRESH_LEASE_SECONDS", 30.0, low=1, high=3600
            ),
            refresh_concurrency=_bounded(env, "NEXUS_REFRESH_CONCURRENCY", 16, 1, 500),
            internal_token=env.internal_tokens()[0],
            policy_target=env.text("NEXUS_POLICY_TARGET", "127.0.0.1:50071"),
            # Above the policy service's own backend timeout, so its answer arrives.
            policy_timeout_seconds=env.number("NEXUS_POLICY_TIMEOUT_SECONDS", 10.0),
            sessions=_session_limits(env),
            session_issuer=env.text(
                "NEXUS_SESSION_ISSUER", env.text("NEXUS_PUBLIC_BASE_URL", "http://127.0.0.1:8080")
            ),
            signing_key_rotation_seconds=env.number(
                "NEXUS_SIGNING_KEY_ROTATION_SECONDS", 7 * 86400.0
            ),
            jwks_cache_seconds=env.seconds("NEXUS_JWKS_CACHE_SECONDS", 60.0, low=0, high=3600),
            session_retention_seconds=env.number("NEXUS_SESSION_RETENTION_SECONDS", 7 * 86400.0),
            broader_session_tokens_by_default=env.deployment() == Deployment.DEVELOPMENT,
            endpoint_confirmation_by_another_admin=_endpoint_confirmation(env),
            cache_max_age_seconds=env.seconds(
                "NEXUS_CACHE_MAX_AGE_SECONDS", 10.0, low=0, high=3600
            ),
            listener_heartbeat_seconds=env.listener_heartbeat_seconds(),
            peer_silence_seconds=env.peer_silence_seconds(),
            audit_batch_max=_audit_batch_max(env),
            tls=ServiceTls.from_env(env),
            caller_proofs=CallerProofs(current, accepted.values()),
            health_listen=env.address("NEXUS_HEALTH_LISTEN", ""),
        )


def _outbound(env: Env, deadline_seconds: float) -> OutboundPolicy:
    return OutboundPolicy.parse(
        allowed_networks=env.text("NEXUS_OUTBOUND_ALLOWED_NETWORKS", ""),
        denied_ports=env.text("NEXUS_OUTBOUND_DENIED_PORTS", ""),
        max_body_bytes=env.integer("NEXUS_OUTBOUND_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
        deadline_seconds=deadline_seconds,
    )


def _bounded(env: Env, name: str, default: int, low: int, high: int) -> int:
    value = env.integer(name, default)
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}")
    return value


def _confirmation_always(env: Env) -> bool:
    # Production requires it unless the deployment opts out by name: an
    # unconfirmed auth_url opened by someone else binds their account to the
    # requester's workspace (connection injection, RFC 9700 §4.7).
    default = "optional" if env.deployment() == Deployment.DEVELOPMENT else "required"
    value = env.text("NEXUS_CONNECTION_CONFIRMATION", default).strip().lower()
    if value not in ("optional", "required"):
        raise ConfigError("NEXUS_CONNECTION_CONFIRMATION must be 'optional' or 'required'")
    return value == "required"


def _keyring(env: Env) -> Keyring:
    """NEXUS_KEYRING_PRIMARY holds a new key back from sealing until every
    replica has it, so none meets a value it cannot open during a rollout."""
    spec = env.text("NEXUS_KEYRING")
    keyring = Keyring.from_spec(spec)
    primary = env.text("NEXUS_KEYRING_PRIMARY", "")
    if not primary:
        return keyring
    if not primary.isdigit() or int(primary) not in keyring.versions:
        raise ConfigError("NEXUS_KEYRING_PRIMARY must be one of the versions in NEXUS_KEYRING")
    return Keyring.from_spec(spec, int(primary))


def _endpoint_confirmation(env: Env) -> bool:
    default = "another_admin" if env.deployment() == Deployment.PRODUCTION else "any_admin"
    value = env.text("NEXUS_ENDPOINT_CONFIRMATION", default).strip().lower()
    if value not in ("any_admin", "another_admin"):
        raise ConfigError("NEXUS_ENDPOINT_CONFIRMATION must be 'any_admin' or 'another_admin'")
    return value == "another_admin"


def _state_key(value: str) -> bytes:
    key = value.encode()
    if len(key) < 32:
        raise ConfigError("NEXUS_STATE_KEY must be at least 32 characters")
    return key


def _audit_batch_max(env: Env) -> int:
    value = env.integer("NEXUS_AUDIT_BATCH_MAX", 256)
    if not 1 <= value <= 10_000:
        raise ConfigError("NEXUS_AUDIT_BATCH_MAX must be between 1 and 10000")
    return value


def _session_limits(env: Env) -> SessionLimits:
    limits = SessionLimits(
        default_ttl_seconds=env.integer("NEXUS_SESSION_DEFAULT_TTL_SECONDS", 900),
        max_ttl_seconds=env.integer("NEXUS_SESSION_MAX_TTL_SECONDS", 3600),
    )
    if not 1 <= limits.default_ttl_seconds <= limits.max_ttl_seconds <= 86400:
        raise ConfigError(
            "need 1 <= NEXUS_SESSION_DEFAULT_TTL_SECONDS <= NEXUS_SESSION_MAX_TTL_SECONDS <= 86400"
        )
    return limits
