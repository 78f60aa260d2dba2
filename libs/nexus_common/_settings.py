"""Reading ``NEXUS_*`` settings from the environment with clear errors."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["PEER_SILENCE_SECONDS", "ConfigError", "Deployment", "Env"]

# NEXUS_LISTENER_HEARTBEAT_SECONDS unless set; a peer silent for three
# heartbeats is judged dead (``Env.peer_silence_seconds``).
_LISTENER_HEARTBEAT_SECONDS = 2.0
_MISSED_HEARTBEATS = 3
PEER_SILENCE_SECONDS = _MISSED_HEARTBEATS * _LISTENER_HEARTBEAT_SECONDS


class Deployment:
    """``NEXUS_ENVIRONMENT``: what a deployment does where an admin decided nothing.

    ``production`` (the default) fails closed: an agent without bindings reaches
    nothing, and a provider that cannot narrow its tokens serves no session asking
    for less than the connection's grant. ``development`` (``make run``) lets the
    docs' walkthrough run as written: unbound agents reach every provider and
    workspace, and broader session tokens are handed out with their real scopes.
    """

    DEVELOPMENT = "development"
    PRODUCTION = "production"


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


class Env:
    """Typed access to an environment mapping (``os.environ`` in production)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str, default: str | None = None) -> str:
        value = self._environ.get(name, "").strip()
        if value:
            return value
        if default is None:
            raise ConfigError(f"{name} must be set")
        return default

    def address(self, name: str, default: str) -> str:
        """A ``host:port`` to listen on; empty when neither set nor defaulted."""
        value = self._environ.get(name, "").strip() or default
        host, sep, port = value.rpartition(":")
        if value and not (sep and host and port.isdigit() and int(port) < 65536):
            raise ConfigError(f"{name} must be host:port, like 0.0.0.0:9090")
        return value

    def integer(self, name: str, default: int) -> int:
        raw = self._environ.get(name, "").strip()
        try:
            return int(raw) if raw else default
        except ValueError as exc:
            raise ConfigError(f"{name} must be an integer") from exc

    def number(self, name: str, default: float) -> float:
        raw = self._environ.get(name, "").strip()
        try:
            return float(raw) if raw else default
        except ValueError as exc:
            raise ConfigError(f"{name} must be a number") from exc

    def seconds(self, name: str, default: float, *, low: float, high: float) -> float:
        """A duration in seconds that must lie within [low, high]."""
        value = self.number(name, default)
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low:g} and {high:g}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self._environ.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in {"1", "true", "yes", "on"}:
            return True
        if raw in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name} must be true or false")

    def internal_tokens(self) -> tuple[str, dict[str, str]]:
        """The token this service sends, and every token it accepts by name.

        ``NEXUS_INTERNAL_TOKEN_PREVIOUS`` keeps old tokens valid while a new
        one rolls out to every service."""
        current = self.text("NEXUS_INTERNAL_TOKEN")
        previous = self._environ.get("NEXUS_INTERNAL_TOKEN_PREVIOUS", "")
        accepted = {"internal": current}
        for index, token in enumerate(filter(None, (t.strip() for t in previous.split(","))), 1):
            accepted[f"internal-previous-{index}"] = token
        return current, accepted

    def jwks_min_refetch_seconds(self) -> float:
        """How soon a token with an unknown key id may make a key set be fetched again."""
        return self.seconds("NEXUS_JWKS_MIN_REFETCH_SECONDS", 30.0, low=0, high=3600)

    def listener_heartbeat_seconds(self) -> float:
        """How often a replica's ``LISTEN`` connection carries it a heartbeat; one
        not back within as long is a gap, so a connection that died without a
        word is found within twice this."""
        return self.seconds(
            "NEXUS_LISTENER_HEARTBEAT_SECONDS", _LISTENER_HEARTBEAT_SECONDS, low=0.05, high=60
        )

    def peer_silence_seconds(self) -> float:
        """How long a connection to another service may stay silent before it is
        judged dead: a change feed is then a gap (the policy service sends a
        heartbeat down it every listener heartbeat, so three were missed), and a
        gRPC connection's keepalive ping goes out, unanswered as long again."""
        return _MISSED_HEARTBEATS * self.listener_heartbeat_seconds()

    def deployment(self) -> str:
        value = self.text("NEXUS_ENVIRONMENT", Deployment.PRODUCTION).lower()
        if value not in (Deployment.DEVELOPMENT, Deployment.PRODUCTION):
            raise ConfigError("NEXUS_ENVIRONMENT must be development or production")
        return value

    def database_url(self, name: str) -> str:
        """The service's own URL setting, else ``DATABASE_URL`` shared by all."""
        return self.text(name, self._environ.get("DATABASE_URL", "").strip() or None)
