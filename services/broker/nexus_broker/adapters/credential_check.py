"""Trying static credentials against the provider before storing them.

Only the answer's status matters, so its body is never read."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from urllib.parse import urljoin

import httpx
from nexus_common import CredentialsRejected, OutboundRefused, ProviderUnavailable

from ..domain.credentials import capture_fields
from ..domain.providers import AuthType, Provider

__all__ = ["CredentialChecker"]


class CredentialChecker:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def check(self, provider: Provider, values: Mapping[str, str]) -> None:
        """Call the provider's user-info endpoint with the credentials applied as
        an agent would; a 401/403 means they are wrong."""
        endpoint = provider.user_info_endpoint
        if not provider.spec.api_base_url or not endpoint:
            return
        url = urljoin(provider.spec.api_base_url.rstrip("/") + "/", endpoint.lstrip("/"))
        headers: dict[str, str] = {}
        params: dict[str, str] = {}
        body: dict[str, str] = {}
        if provider.spec.auth_type == AuthType.BASIC_AUTH:
            pair = f"{values.get('username', '')}:{values.get('password', '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            for field in capture_fields(provider):
                if field.name in values:
                    target = {"header": headers, "query": params, "body": body}[field.location]
                    target[field.key] = values[field.name]
        try:
            async with self._http.stream(
                "POST" if body else "GET",
                url,
                headers=headers,
                params=params,
                data=body or None,
                follow_redirects=False,
            ) as response:
                status = response.status_code
        except OutboundRefused as exc:
            raise ProviderUnavailable(
                f"{provider.name} was not called to check the credentials: {exc}"
            ) from exc
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(
                f"{provider.name} could not be reached to check the credentials; try again"
            ) from exc
        if status in (401, 403):
            raise CredentialsRejected(f"{provider.name} rejected these credentials")
        if status >= 400:
            raise ProviderUnavailable(
                f"{provider.name} answered HTTP {status} when checking the credentials"
            )
