"""A browser's walk through redirects that stops before a page nobody serves.

Tests whose return URL is an app that does not run (``http://localhost:3000``)
follow Nexus' redirects, keeping cookies, up to the redirect into that app.
"""

from __future__ import annotations

import httpx

__all__ = ["follow_until"]


def follow_until(browser: httpx.Client, url: str, stop: str, *, hops: int = 10) -> httpx.Response:
    """GET ``url`` and follow redirects until one leads to a URL starting with
    ``stop``, or a page answers without redirecting; that last response."""
    reply = browser.get(url)
    for _ in range(hops):
        location = reply.headers.get("location")
        if not reply.is_redirect or location is None or location.startswith(stop):
            return reply
        reply = browser.get(reply.url.join(location))
    raise AssertionError(f"more than {hops} redirects from {url}")
