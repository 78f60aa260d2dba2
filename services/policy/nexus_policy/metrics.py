"""The policy service's own Prometheus metrics, beside the per-RPC ones every
service has."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "AUDIT_FORWARDED",
    "AUDIT_OUTBOX_OLDEST_AGE",
    "BACKEND_AUTH_CACHE_HITS",
    "BACKEND_AUTH_REQUESTS",
    "BACKEND_AUTH_SECONDS",
]

BACKEND_AUTH_REQUESTS = Counter(
    "nexus_backend_auth_requests_total",
    "Calls to BACKEND_AUTH_URL: accepted (a user), rejected (401/403) or unavailable "
    "(unreachable, slow, 5xx or a malformed answer; the session is refused with 503).",
    ["outcome"],
)
BACKEND_AUTH_SECONDS = Histogram(
    "nexus_backend_auth_request_seconds",
    "How long BACKEND_AUTH_URL took to answer, or to time out.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BACKEND_AUTH_CACHE_HITS = Counter(
    "nexus_backend_auth_cache_hits_total",
    "User token decisions answered from the cache, without calling BACKEND_AUTH_URL.",
)
AUDIT_FORWARDED = Counter(
    "nexus_audit_events_forwarded_total",
    "Audit events handed to the broker and removed from the outbox.",
)
AUDIT_OUTBOX_OLDEST_AGE = Gauge(
    "nexus_audit_outbox_oldest_event_age_seconds",
    "Age of the oldest audit event waiting in the outbox when last looked at; 0 when "
    "empty. It grows while the broker cannot be reached.",
)
