"""Where a finished connection may send the browser: an allowlist of origins.

An entry is ``scheme://host[:port]``; ``scheme://*.example.com`` also admits
any subdomain (not the bare domain), and ``:*`` any port (for loopback dev).
Anything else must match scheme, host
and port exactly, so an open redirect through Nexus is impossible.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["ReturnUrlPolicy", "append_query", "origin_of"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
# A host as a CSP source expression may hold it: a DNS name or an IP literal.
_PLAIN_HOST = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\]")


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or port is None:
        return None
    if parts.username or parts.password:
        return None
    return parts.scheme, parts.hostname.lower(), port


class ReturnUrlPolicy:
    def __init__(self, entries: Iterable[str]) -> None:
        self._entries: list[tuple[str, str, int | None]] = []
        for entry in entries:
            any_port = entry.endswith(":*")
            origin = _origin(entry.removesuffix(":*").replace("://*.", "://wildcard."))
            if origin is None:
                raise ValueError(
                    f"return URL allowlist entry {entry!r} is not scheme://host[:port]"
                )
            scheme, host, port = origin
            if "://*." in entry:
                host = "*." + host.removeprefix("wildcard.")
            self._entries.append((scheme, host, None if any_port else port))

    def allows(self, url: str) -> bool:
        origin = _origin(url)
        if origin is None:
            return False
        scheme, host, port = origin
        for allowed_scheme, allowed_host, allowed_port in self._entries:
            if scheme != allowed_scheme or allowed_port not in (None, port):
                continue
            if allowed_host.startswith("*."):
                if host.endswith(allowed_host[1:]):
                    return True
            elif host == allowed_host:
                return True
        return False


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, safe to place in a CSP header (no
    default port); empty when the URL has no such plain origin."""
    origin = _origin(url)
    if origin is None:
        return ""
    scheme, host, port = origin
    if ":" in host:
        host = f"[{host}]"
    if not _PLAIN_HOST.fullmatch(host):
        return ""
    return f"{scheme}://{host}" + ("" if port == _DEFAULT_PORTS[scheme] else f":{port}")


def append_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to whatever query it already has."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))
