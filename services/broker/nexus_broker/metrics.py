"""The broker's own Prometheus metrics, beside the per-RPC ones every service has."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["SESSIONS", "TOKEN_REFRESHES"]

SESSIONS = Counter(
    "nexus_sessions_total",
    "Session requests decided: kind (agent or obo), outcome (granted or denied) and, "
    "for a denial, its reason.",
    ["kind", "outcome", "reason"],
)
TOKEN_REFRESHES = Counter(
    "nexus_token_refreshes_total",
    "Connection token refreshes: succeeded, retrying (a transient failure, backing "
    "off), reauth_required (the user must reconnect) or discarded (the lease was taken "
    "over before the result was stored).",
    ["outcome"],
)
