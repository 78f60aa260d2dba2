"""Provider endpoints may not aim Nexus inward: checked when written, and again when called.

A URL whose host is, or resolves to, an address the outbound policy refuses
is refused here with ``OutboundAddressNotAllowed`` naming the field. A name
that does not resolve now is accepted: the outbound client checks every
address again at connect time, which also defeats DNS rebinding. The
endpoints of a discovery document, third-party content, get the same check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from urllib.parse import urljoin

from nexus_common import OutboundAddressNotAllowed, OutboundPolicy

from ..domain.discovery import Discovery
from ..domain.providers import ProviderSpec

__all__ = ["check_discovered_endpoints", "check_spec_endpoints"]

_SPEC_URLS = (
    "auth_url",
    "token_url",
    "issuer",
    "api_base_url",
    "jwks_uri",
    "revocation_url",
    "user_info_endpoint",
)
_DISCOVERED_URLS = (
    "authorization_endpoint",
    "token_endpoint",
    "userinfo_endpoint",
    "jwks_uri",
    "revocation_endpoint",
)


async def _check_all(checks: list[tuple[str, str, str]], policy: OutboundPolicy) -> None:
    """Refuse the first (field, label, url) whose url the policy refuses.

    The names resolve concurrently, so slow DNS costs one deadline, not one per URL."""
    problems = await asyncio.gather(*(policy.url_refusal(url) for _, _, url in checks))
    for (field, label, _), problem in zip(checks, problems, strict=True):
        if problem is not None:
            raise OutboundAddressNotAllowed(f"{label} is refused: {problem}", field=field)


async def check_spec_endpoints(
    spec: ProviderSpec, policy: OutboundPolicy, fields: Iterable[str] = _SPEC_URLS
) -> None:
    """Refuse the spec's URLs among ``fields`` that point where Nexus may not call."""
    checks = []
    for name in _SPEC_URLS:
        value = getattr(spec, name)
        if name not in fields or not value:
            continue
        if name == "user_info_endpoint" and value.startswith("/"):
            value = urljoin(spec.api_base_url.rstrip("/") + "/", value.lstrip("/"))
        checks.append((name, name, value))
    await _check_all(checks, policy)


async def check_discovered_endpoints(discovery: Discovery, policy: OutboundPolicy) -> None:
    checks = [
        (name, f"the discovery document's {name}", getattr(discovery, name))
        for name in _DISCOVERED_URLS
        if getattr(discovery, name)
    ]
    await _check_all(checks, policy)
