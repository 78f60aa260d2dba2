"""The OAuth 2.0 token endpoint (RFC 6749): code exchange (§4.1.3) and refresh (§6).

Client authentication follows §2.3.1: ``client_secret_basic`` form-encodes id
and secret before Base64; ``client_secret_post`` puts them in the body;
``none`` (a public client) sends only ``client_id``. Responses are read as JSON
(§5.1) or, as some providers answer, form-encoded, and read no further than
64 KiB. Faults are classified so the refresh loop knows whether to retry
(5xx, 429, timeouts, a call the outbound policy refused) or to ask the user
to reconnect (``invalid_grant``, §5.2). Bodies are never quoted.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl, quote

import httpx
from nexus_common import BodyTooLarge, OutboundRefused, outbound_span, parse_json, read_capped

from ..domain.connections import TokenSet, token_lifetime

__all__ = ["ClientCredentials", "TokenEndpoint", "TokenEndpointError"]

_MAX_BODY = 64 * 1024
# §5.2 errors after which retrying the same grant cannot succeed.
_PERMANENT = {"invalid_grant", "invalid_client", "unauthorized_client", "unsupported_grant_type"}


class TokenEndpointError(Exception):
    """A failed token request. ``transient`` faults may be retried later."""

    def __init__(
        self, message: str, *, error: str = "", transient: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error = error
        self.transient = transient
        self.retry_after = retry_after


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    client_secret: str | None = field(repr=False)
    auth_method: str  # client_secret_basic | client_secret_post | none


def _retry_after(value: str | None, now: datetime) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(0.0, (parsedate_to_datetime(value) - now).total_seconds())
    except (TypeError, ValueError):
        return None


def _parse_body(response: httpx.Response, content: bytes) -> dict[str, str]:
    if "json" in response.headers.get("content-type", "") or content.lstrip().startswith(b"{"):
        try:
            parsed = parse_json(content)
        except ValueError:
            return {}
        return {str(k): v for k, v in parsed.items()} if isinstance(parsed, dict) else {}
    return dict(parse_qsl(content.decode("utf-8", "replace")))


class TokenEndpoint:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def post_form(
        self, url: str, client: ClientCredentials, form: dict[str, str], now: datetime
    ) -> dict[str, str]:
        """POST a form to a provider endpoint with client authentication."""
        headers = {"Accept": "application/json"}
        body = dict(form)
        if client.auth_method == "client_secret_basic" and client.client_secret is not None:
            pair = f"{quote(client.client_id, safe='')}:{quote(client.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            body["client_id"] = client.client_id
            if client.auth_method == "client_secret_post" and client.client_secret is not None:
                body["client_secret"] = client.client_secret
        purpose = form.get("grant_type") or "revocation"
        with outbound_span(f"POST provider {purpose}", "POST", url) as span:
            response, content = await self._send(url, body, headers)
            span.set_attribute("http.response.status_code", response.status_code)
            return self._read(response, content, now)

    async def _send(
        self, url: str, body: dict[str, str], headers: dict[str, str]
    ) -> tuple[httpx.Response, bytes]:
        try:
            async with self._http.stream(
                "POST", url, data=body, headers=headers, follow_redirects=False
            ) as response:
                return response, await read_capped(response, _MAX_BODY)
        except BodyTooLarge as exc:
            raise TokenEndpointError(
                "the provider's token endpoint answered more than 64 KiB", transient=True
            ) from exc
        except OutboundRefused as exc:
            # The provider's configuration (or its DNS) must change; the tokens are kept.
            raise TokenEndpointError(
                f"the provider's token endpoint was not called: {exc}", transient=True
            ) from exc
        except httpx.TimeoutException as exc:
            raise TokenEndpointError(
                "the provider's token endpoint timed out", transient=True
            ) from exc
        except httpx.TransportError as exc:
            raise TokenEndpointError(
                f"the provider's token endpoint could not be reached ({type(exc).__name__})",
                transient=True,
            ) from exc

    @staticmethod
    def _read(response: httpx.Response, content: bytes, now: datetime) -> dict[str, str]:
        payload = _parse_body(response, content)
        if response.status_code == 429 or response.status_code >= 500:
            raise TokenEndpointError(
                f"the provider's token endpoint answered HTTP {response.status_code}",
                transient=True,
                retry_after=_retry_after(response.headers.get("retry-after"), now),
            )
        if response.status_code != 200:
            error = payload.get("error", "")
            error = error if isinstance(error, str) and error.replace("_", "").isalpha() else ""
            raise TokenEndpointError(
                f"the provider refused the request ({error or f'HTTP {response.status_code}'})",
                error=error,
                transient=error not in _PERMANENT and response.status_code not in (400, 401),
            )
        return payload

    @staticmethod
    def _token_set(payload: Mapping[str, object], now: datetime) -> TokenSet:
        access_token = payload.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise TokenEndpointError(
                "the provider's token response has no access_token", transient=False
            )
        try:
            lifetime = token_lifetime(payload.get("expires_in"))
        except ValueError as exc:
            raise TokenEndpointError(
                "the provider's token response has an expires_in that is not a lifetime",
                transient=False,
            ) from exc
        refresh_token = payload.get("refresh_token")
        scope = payload.get("scope")
        return TokenSet(
            access_token=access_token,
            token_type=str(payload.get("token_type") or "Bearer"),
            refresh_token=refresh_token
            if isinstance(refresh_token, str) and refresh_token
            else None,
            expires_at=now + lifetime if lifetime is not None else None,
            scope=tuple(scope.split()) if isinstance(scope, str) else (),
        )

    async def exchange_code(
        self,
        url: str,
        client: ClientCredentials,
        *,
        code: str,
        redirect_uri: str,
        code_verifier: str,
        scopes: tuple[str, ...] | None,
        now: datetime,
    ) -> tuple[TokenSet, str | None]:
        """The granted tokens and the id_token, if the provider sent one."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        if scopes:
            form["scope"] = " ".join(scopes)
        payload = await self.post_form(url, client, form, now)
        id_token = payload.get("id_token")
        return self._token_set(payload, now), id_token if isinstance(id_token, str) else None

    async def refresh(
        self,
        url: str,
        client: ClientCredentials,
        *,
        refresh_token: str,
        scopes: tuple[str, ...] | None,
        now: datetime,
    ) -> TokenSet:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if scopes:
            form["scope"] = " ".join(scopes)
        return self._token_set(await self.post_form(url, client, form, now), now)
