"""Where a finished connection may send the browser: an allowlist of origins.

An entry is ``scheme://host[:port]``; ``scheme://*.example.com`` also admits
any subdomain (not the bare domain), and ``:*`` any port (for loopback dev).
Anything else must match scheme, host
and port exactly, so an open redirect through Nexus is impossible.

A URL is judged as the browser that follows it parses it (the WHATWG URL
Standard), not as ``urlsplit`` does where the two differ: for http(s) a
backslash ends the host as ``/`` does (``https://evil.com\\.app.example.com``
goes to ``evil.com``), tabs and newlines are removed anywhere, and a host may
be percent-decoded or IDNA-mapped. Such URLs are refused outright rather than
parsed twice: a return URL holds no whitespace, control character,
backslash or user information, and its host is plain ASCII.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["ReturnUrlPolicy", "append_query", "origin_of"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
# A host as a CSP source expression may hold it: a DNS name or an IP literal.
_PLAIN_HOST = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\]")
# WHATWG URL §4.4 removes tab and newline anywhere and strips C0 controls and
# spaces at the ends, and for special schemes ends a host at a backslash as at
# "/". Refusing them all leaves one reading of the URL.
_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f\\]")
# scheme://host[:port] then the end or a path, query or fragment. No "@" can
# precede the host, so user information (even empty) is refused.
_AUTHORITY = re.compile(
    r"(?P<scheme>https?)://(?P<host>[^/?#:@\[\]]+|\[[^/?#@\]]*\])"
    r"(?::(?P<port>[0-9]{1,5}))?(?=[/?#]|$)",
    re.IGNORECASE | re.ASCII,
)


def _origin(url: str) -> tuple[str, str, int] | None:
    if _UNSAFE.search(url):
        return None
    found = _AUTHORITY.match(url)
    if found is None:
        return None
    scheme, host = found["scheme"].lower(), found["host"].lower()
    port = int(found["port"]) if found["port"] else _DEFAULT_PORTS[scheme]
    if not _PLAIN_HOST.fullmatch(host) or not 0 < port < 65536:
        return None
    if host.startswith("["):
        try:
            host = str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            return None
    return scheme, host, port


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
    return f"{scheme}://{host}" + ("" if port == _DEFAULT_PORTS[scheme] else f":{port}")


def append_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to whatever query it already has."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))
