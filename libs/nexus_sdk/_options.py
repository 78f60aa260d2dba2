"""How a client reaches the gateway and which credential it presents."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["AGENT_KEY_ENV", "API_KEY_ENV", "NexusClientOptions", "is_loopback_host"]

AGENT_KEY_ENV = "NEXUS_AGENT_KEY"
API_KEY_ENV = "NEXUS_API_KEY"


@dataclass(frozen=True, repr=False)
class NexusClientOptions:
    """Where the gateway is and who is calling.

    ``agent_key`` is an agent's own key, sent as ``Authorization: Bearer``;
    ``api_key`` is an admin key for application backends, sent as ``X-API-Key``.
    When neither is given they are read from ``NEXUS_AGENT_KEY`` and
    ``NEXUS_API_KEY``, so agent code never has to carry a key in source.
    Giving both is refused: the gateway would act on the admin key, and an
    agent silently running with admin rights is the mistake to prevent.

    Keys never appear in ``repr()``, ``str()`` or logs. Plain ``http://`` is
    accepted only to this machine (``localhost``, 127.0.0.0/8, ``::1``): a key
    sent in clear to any other host is readable on the way.
    """

    gateway_url: str
    agent_key: str | None = None
    api_key: str | None = None
    timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.gateway_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("gateway_url must be an http:// or https:// URL with a host")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ValueError(
                "gateway_url must use https: plain http is allowed only to localhost, "
                "127.0.0.0/8 or ::1, because the key would travel unencrypted"
            )
        if parts.query or parts.fragment:
            raise ValueError("gateway_url must not have a query or a fragment")
        if parts.username is not None or parts.password is not None:
            # It would be printed wherever the URL is; keys go in agent_key or api_key.
            raise ValueError("gateway_url must not hold credentials; use agent_key or api_key")
        if not self.timeout_seconds > 0:
            raise ValueError("timeout_seconds must be positive")
        if self.agent_key is None and self.api_key is None:
            # Frozen, so the environment's keys are set the way dataclasses do it.
            object.__setattr__(self, "agent_key", os.environ.get(AGENT_KEY_ENV) or None)
            object.__setattr__(self, "api_key", os.environ.get(API_KEY_ENV) or None)
        if self.agent_key is not None and self.api_key is not None:
            raise ValueError(
                "give agent_key or api_key, not both "
                f"(check the {AGENT_KEY_ENV} and {API_KEY_ENV} environment variables)"
            )

    @property
    def base_url(self) -> str:
        """The gateway URL without a trailing slash, so paths can be appended."""
        return self.gateway_url.rstrip("/")

    @property
    def origin(self) -> str:
        """``scheme://host[:port]``, safe for messages (no user info, no path)."""
        parts = urlsplit(self.gateway_url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")

    def auth_headers(self) -> dict[str, str]:
        """The caller credential as the gateway expects it; empty without one."""
        if self.agent_key is not None:
            return {"Authorization": f"Bearer {self.agent_key}"}
        if self.api_key is not None:
            return {"X-API-Key": self.api_key}
        return {}

    def __repr__(self) -> str:
        def shown(key: str | None) -> str:
            return "None" if key is None else "'***'"

        return (
            f"NexusClientOptions(gateway_url={self.gateway_url!r}, "
            f"agent_key={shown(self.agent_key)}, api_key={shown(self.api_key)}, "
            f"timeout_seconds={self.timeout_seconds!r})"
        )


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address: where plain http may carry a key."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
