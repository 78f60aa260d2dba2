"""Providers: what can be configured, and the rules each auth type imposes.

``ProviderSpec`` is what an admin writes; ``Provider`` is what is stored (the
client secret only as a flag: the plaintext never leaves the vault adapter).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any

from nexus_common import (
    ProviderEndpointsPending,
    SecretRequiredForEndpointChange,
    ValidationFailed,
)

from .discovery import Discovery, DiscoveryStatus
from .params import ProviderParams, parse_params
from .urls import url_problem

__all__ = [
    "AUTH_TYPES",
    "DISCOVERY",
    "ENDPOINT_FIELDS",
    "NAME_PATTERN",
    "SETTABLE_FIELDS",
    "TOKEN_ENDPOINTS",
    "AuthType",
    "Provider",
    "ProviderSpec",
    "ProviderState",
    "check_secret_follows_endpoints",
    "endpoint_changes",
    "token_endpoint_moves",
    "validate_spec",
]

NAME_PATTERN = re.compile(r"[a-z0-9-]+")
_CATEGORY_PATTERN = re.compile(r"[a-z0-9-]*")
_MAX_NAME = 63
_MAX_DESCRIPTION = 1024
_MAX_SCOPES = 100
_MAX_SCOPE = 256
_MAX_CLIENT_FIELD = 1024


class AuthType:
    OAUTH2 = "oauth2"
    API_KEY = "api_key"
    BASIC_AUTH = "basic_auth"
    # Internal services whose tokens Nexus itself issues.
    NEXUS = "nexus"


AUTH_TYPES = (AuthType.OAUTH2, AuthType.API_KEY, AuthType.BASIC_AUTH, AuthType.NEXUS)
STATIC_AUTH_TYPES = (AuthType.API_KEY, AuthType.BASIC_AUTH)


class ProviderState:
    ACTIVE = "active"
    DELETED = "deleted"


@dataclass(frozen=True)
class ProviderSpec:
    name: str = ""
    auth_type: str = ""
    description: str = ""
    category: str = ""
    client_id: str = ""
    # None means "unchanged" on update and "none" on create.
    client_secret: str | None = field(default=None, repr=False)
    auth_url: str = ""
    token_url: str = ""
    issuer: str = ""
    enable_discovery: bool = False
    scopes: tuple[str, ...] = ()
    api_base_url: str = ""
    user_info_endpoint: str = ""
    jwks_uri: str = ""
    revocation_url: str = ""
    params: dict[str, Any] = field(default_factory=dict)


SETTABLE_FIELDS = frozenset(f.name for f in fields(ProviderSpec))
# Every field that decides where Nexus sends a request for a provider, directly
# or through the discovery document the issuer serves.
ENDPOINT_FIELDS = (
    "issuer",
    "enable_discovery",
    "auth_url",
    "token_url",
    "revocation_url",
    "jwks_uri",
    "user_info_endpoint",
    "api_base_url",
)
# Named as the mover when a discovery re-fetch moved the endpoints.
DISCOVERY = "discovery"
# The effective endpoints that receive a connection's tokens (and the client
# secret): refresh grants and code exchanges, and RFC 7009 revocations.
TOKEN_ENDPOINTS = ("token_url", "revocation_url")


@dataclass(frozen=True)
class Provider:
    id: str
    spec: ProviderSpec
    has_client_secret: bool
    discovery: Discovery
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
    # Who moved its token endpoints while connections held tokens (an audit
    # actor, or DISCOVERY): nothing goes there until an admin confirms the move.
    endpoints_moved_by: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> str:
        return ProviderState.DELETED if self.deleted_at else ProviderState.ACTIVE

    @property
    def endpoints_pending(self) -> bool:
        return self.endpoints_moved_by is not None

    @property
    def params(self) -> ProviderParams:
        return parse_params(self.spec.auth_type, self.spec.params)

    @property
    def auth_url(self) -> str:
        return self.spec.auth_url or self.discovery.authorization_endpoint

    @property
    def token_url(self) -> str:
        return self.spec.token_url or self.discovery.token_endpoint

    @property
    def jwks_uri(self) -> str:
        return self.spec.jwks_uri or self.discovery.jwks_uri

    @property
    def revocation_url(self) -> str:
        return self.spec.revocation_url or self.discovery.revocation_endpoint

    @property
    def sends_iss(self) -> bool:
        """Whether authorization responses must carry ``iss`` (RFC 9207)."""
        return (
            self.params.authorization_response_iss_parameter_supported
            or self.discovery.authorization_response_iss_parameter_supported
        )

    @property
    def user_info_endpoint(self) -> str:
        return self.spec.user_info_endpoint or self.discovery.userinfo_endpoint

    def endpoints(self) -> dict[str, Any]:
        """Where requests for this provider go: given, or found by discovery."""
        given = {name: getattr(self.spec, name) for name in ENDPOINT_FIELDS}
        return given | {
            "auth_url": self.auth_url,
            "token_url": self.token_url,
            "revocation_url": self.revocation_url,
            "jwks_uri": self.jwks_uri,
            "user_info_endpoint": self.user_info_endpoint,
        }

    def require_endpoints_confirmed(self) -> None:
        """Refuse to send a token or secret to endpoints that await confirmation."""
        if self.endpoints_pending:
            raise ProviderEndpointsPending(
                f"the token endpoints of provider {self.name!r} changed and await an "
                f"admin's confirmation (POST /v1/providers/{self.id}:confirmEndpoints); until "
                "then Nexus sends no token there: tokens still valid keep working",
                provider=self.name,
            )

    def discovery_due(
        self, now: datetime, retry_after_seconds: float, max_age_seconds: float
    ) -> bool:
        """Whether using this provider now should (re)fetch its discovery document."""
        if not self.spec.enable_discovery:
            return False
        if self.discovery.status == DiscoveryStatus.PENDING:
            last = self.discovery.attempted_at
            return last is None or (now - last).total_seconds() >= retry_after_seconds
        fetched = self.discovery.fetched_at
        return fetched is None or (now - fetched).total_seconds() >= max_age_seconds


def _fail(field_name: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, field=field_name)


def _check_urls(spec: ProviderSpec) -> None:
    for name in ("auth_url", "token_url", "issuer", "api_base_url", "jwks_uri", "revocation_url"):
        value = getattr(spec, name)
        problem = url_problem(value) if value else None
        if problem is not None:
            raise _fail(name, f"{name} {problem}")
    endpoint = spec.user_info_endpoint
    if endpoint and not endpoint.startswith("/"):
        problem = url_problem(endpoint)
        if problem is not None:
            raise _fail(
                "user_info_endpoint",
                f"user_info_endpoint {problem} (or a path relative to api_base_url)",
            )


def _check_scopes(scopes: tuple[str, ...]) -> None:
    if len(scopes) > _MAX_SCOPES:
        raise _fail("scopes", f"a provider may declare at most {_MAX_SCOPES} scopes")
    if len(set(scopes)) != len(scopes):
        raise _fail("scopes", "scopes must not repeat")
    for scope in scopes:
        # RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
        if (
            not scope
            or len(scope) > _MAX_SCOPE
            or any(ch in ' "\\' or not 0x21 <= ord(ch) <= 0x7E for ch in scope)
        ):
            raise _fail("scopes", f"scope {scope!r} is not a valid OAuth scope token")


_OAUTH_ONLY = (
    "client_id",
    "client_secret",
    "auth_url",
    "token_url",
    "issuer",
    "jwks_uri",
    "revocation_url",
)


def _check_oauth2(spec: ProviderSpec, has_secret: bool, params: ProviderParams) -> None:
    if not spec.client_id:
        raise _fail("client_id", "client_id is required for oauth2 providers")
    if not has_secret and params.token_endpoint_auth_method != "none":  # noqa: S105
        raise _fail(
            "client_secret",
            "client_secret is required for oauth2 providers "
            '(set params.token_endpoint_auth_method to "none" for a public client)',
        )
    if params.authorization_response_iss_parameter_supported and not spec.issuer:
        raise _fail(
            "issuer",
            "issuer is required when params.authorization_response_iss_parameter_supported "
            "is true: authorization responses' iss is compared with it",
        )
    if spec.enable_discovery:
        if not spec.issuer:
            raise _fail("issuer", "issuer is required when enable_discovery is true")
        return
    for name in ("auth_url", "token_url"):
        if not getattr(spec, name):
            raise _fail(
                name, f"{name} is required for oauth2 providers unless discovery is enabled"
            )


def _check_not_oauth(spec: ProviderSpec, has_secret: bool) -> None:
    for name in _OAUTH_ONLY:
        present = has_secret if name == "client_secret" else bool(getattr(spec, name))
        if present:
            raise _fail(name, f"{name} does not apply to {spec.auth_type} providers")
    if spec.enable_discovery:
        raise _fail("enable_discovery", f"discovery does not apply to {spec.auth_type} providers")


def validate_spec(spec: ProviderSpec, *, has_secret: bool) -> ProviderSpec:
    """Check a complete spec; return it normalised. ``has_secret`` says whether a
    client secret is (or will be) stored."""
    if not spec.name:
        raise _fail("name", "name is required")
    if len(spec.name) > _MAX_NAME or not NAME_PATTERN.fullmatch(spec.name):
        raise _fail(
            "name",
            f"name must be 1-{_MAX_NAME} lower-case letters, digits or dashes "
            '(e.g. "google-calendar")',
        )
    if not spec.auth_type:
        raise _fail("auth_type", f"auth_type is required: one of {', '.join(AUTH_TYPES)}")
    if spec.auth_type not in AUTH_TYPES:
        raise _fail(
            "auth_type",
            f"auth_type {spec.auth_type!r} is not supported: use one of {', '.join(AUTH_TYPES)}",
        )
    if len(spec.description) > _MAX_DESCRIPTION:
        raise _fail("description", f"description is longer than {_MAX_DESCRIPTION} characters")
    if len(spec.category) > _MAX_NAME or not _CATEGORY_PATTERN.fullmatch(spec.category):
        raise _fail("category", "category must be lower-case letters, digits or dashes")
    if len(spec.client_id) > _MAX_CLIENT_FIELD or len(spec.client_secret or "") > _MAX_CLIENT_FIELD:
        raise _fail("client_id", "client_id and client_secret must be under 1024 characters")
    _check_urls(spec)
    _check_scopes(spec.scopes)
    params = parse_params(spec.auth_type, spec.params)
    if spec.auth_type == AuthType.OAUTH2:
        _check_oauth2(spec, has_secret, params)
    else:
        _check_not_oauth(spec, has_secret)
    if spec.auth_type == AuthType.NEXUS and not spec.scopes:
        raise _fail("scopes", "nexus providers must declare the scopes Nexus may issue")
    return replace(spec, params=params.as_dict())


def endpoint_changes(current: ProviderSpec, updated: ProviderSpec) -> list[str]:
    """The endpoint fields whose value an update changes."""
    return [name for name in ENDPOINT_FIELDS if getattr(current, name) != getattr(updated, name)]


def token_endpoint_moves(before: Provider, after: Provider) -> list[str]:
    """The effective token endpoints (given or discovered) that differ."""
    return [name for name in TOKEN_ENDPOINTS if getattr(before, name) != getattr(after, name)]


def check_secret_follows_endpoints(
    provider: Provider, changed_endpoints: list[str], *, secret_given: bool
) -> None:
    """A stored client secret only ever goes where it was sent with.

    Moving an endpoint of a provider that holds a secret would send that secret
    (and every connection's refresh token) to the new host on the next refresh,
    so whoever moves it must know the secret, or replace it.
    """
    if not changed_endpoints or not provider.has_client_secret or secret_given:
        return
    named = ", ".join(changed_endpoints)
    raise SecretRequiredForEndpointChange(
        f"changing {named} of provider {provider.name!r} would send its stored client "
        "secret to a new endpoint: give client_secret again in the same request "
        "(and name it in update_mask)",
        fields=",".join(changed_endpoints),
    )
