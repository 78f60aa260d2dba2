"""Endpoint URL rules shared by provider configuration and discovery."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["is_loopback_host", "url_problem"]


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(value: str) -> str | None:
    """Why ``value`` is not an acceptable endpoint, or None.

    Endpoints carry secrets (client credentials, codes, tokens), so only
    https is accepted, except plain http to this machine for development.
    Where a URL may lead is the outbound policy's question
    (``nexus_common.OutboundPolicy``): this machine too is refused unless
    ``NEXUS_OUTBOUND_ALLOWED_NETWORKS`` allows loopback.
    """
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        _ = parts.port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("https", "http") or not host:
        return "must be an absolute https URL"
    if parts.scheme == "http" and not is_loopback_host(host):
        return "must use https (plain http is allowed only for localhost)"
    if parts.username or parts.password:
        return "must not contain credentials"
    if parts.fragment:
        return "must not contain a fragment"
    return None
