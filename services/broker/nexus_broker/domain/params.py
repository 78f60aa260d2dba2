"""Provider ``params``: quirks, extra authorization parameters, credential schema.

Known keys are typed. Any other key is an extra authorization parameter
(e.g. ``"access_type": "offline"``), which must be a string and can never
override a parameter the OAuth flow itself sets (RFC 6749 §4.1.1, RFC 7636
§4.3, OIDC Core §3.1.2.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from nexus_common import ValidationFailed

__all__ = ["CORE_OAUTH_PARAMS", "CredentialField", "ProviderParams", "parse_params"]

CORE_OAUTH_PARAMS = frozenset(
    {
        "client_id",
        "client_secret",
        "redirect_uri",
        "response_type",
        "scope",
        "state",
        "code",
        "code_challenge",
        "code_challenge_method",
        "code_verifier",
        "nonce",
        "grant_type",
        "refresh_token",
        "response_mode",
    }
)
# RFC 7591 §2 token endpoint authentication methods (names, not secrets).
CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105
TOKEN_ENDPOINT_AUTH_METHODS = (CLIENT_SECRET_BASIC, "client_secret_post", "none")
LOCATIONS = ("header", "query", "body")
_FLAGS = (
    "skip_scope_on_auth",
    "skip_scope_on_exchange",
    "supports_scope_narrowing",
    "revoke_narrowed_tokens",
    "authorization_response_iss_parameter_supported",
)
_BROADER = "allow_broader_session_tokens"
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_HEADER_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_EXTRA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_FIELDS = 20
_MAX_EXTRA = 32
_MAX_TEXT = 256

BASIC_AUTH_FIELDS = ("username", "password")


@dataclass(frozen=True)
class CredentialField:
    """One value a user supplies for a static-credential provider."""

    name: str
    location: str
    key: str
    label: str
    required: bool = True
    secret: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": self.location,
            "key": self.key,
            "label": self.label,
            "required": self.required,
            "secret": self.secret,
        }


@dataclass(frozen=True)
class ProviderParams:
    skip_scope_on_auth: bool = False
    skip_scope_on_exchange: bool = False
    # Whether the provider can issue a token with fewer scopes on refresh.
    supports_scope_narrowing: bool = False
    # Whether revoking a narrowed token leaves the connection's grant alone, so
    # Nexus may revoke it when its last session closes. RFC 7009 §2.1 lets a
    # server revoke the whole grant instead, so Nexus never assumes it.
    revoke_narrowed_tokens: bool = False
    # RFC 9207: the provider sends ``iss`` in authorization responses, so one
    # without it is refused (discovery can say so too).
    authorization_response_iss_parameter_supported: bool = False
    # Whether a session may hand out a token broader than it asked for when
    # the provider cannot narrow; None leaves it to NEXUS_ENVIRONMENT.
    allow_broader_session_tokens: bool | None = None
    token_endpoint_auth_method: str = CLIENT_SECRET_BASIC
    auth_params: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))
    credential_schema: tuple[CredentialField, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.auth_params)
        for flag in _FLAGS:
            if getattr(self, flag):
                out[flag] = True
        if self.allow_broader_session_tokens is not None:
            out[_BROADER] = self.allow_broader_session_tokens
        if self.token_endpoint_auth_method != CLIENT_SECRET_BASIC:
            out["token_endpoint_auth_method"] = self.token_endpoint_auth_method
        if self.credential_schema:
            out["credential_schema"] = {"fields": [f.as_dict() for f in self.credential_schema]}
        return out


def _fail(key: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, field=f"params.{key}")


def _text(raw: dict[str, Any], key: str, where: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise _fail(where, f"params.{where} must be a non-empty string")
    return value


def _flag(raw: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise _fail(where, f"params.{where} must be true or false")
    return value


def _parse_field(raw: Any, index: int) -> CredentialField:
    where = f"credential_schema.fields[{index}]"
    if not isinstance(raw, dict):
        raise _fail(where, f"params.{where} must be an object")
    unknown = set(raw) - {"name", "in", "key", "label", "required", "secret"}
    if unknown:
        raise _fail(where, f"params.{where} has unknown keys: {', '.join(sorted(unknown))}")
    name = _text(raw, "name", f"{where}.name", "")
    if not _FIELD_NAME.fullmatch(name):
        raise _fail(f"{where}.name", "credential field names are lower-case snake_case")
    location = _text(raw, "in", f"{where}.in", "header")
    if location not in LOCATIONS:
        raise _fail(f"{where}.in", f"params.{where}.in must be one of {', '.join(LOCATIONS)}")
    key = _text(raw, "key", f"{where}.key", name)
    if location == "header" and not _HEADER_TOKEN.fullmatch(key):
        raise _fail(f"{where}.key", f"{key!r} is not a valid HTTP header name")
    return CredentialField(
        name=name,
        location=location,
        key=key,
        label=_text(raw, "label", f"{where}.label", name.replace("_", " ").capitalize()),
        required=_flag(raw, "required", f"{where}.required", True),
        secret=_flag(raw, "secret", f"{where}.secret", True),
    )


def _parse_schema(raw: Any) -> tuple[CredentialField, ...]:
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("fields"), list)
        or set(raw) != {"fields"}
    ):
        raise _fail("credential_schema", 'params.credential_schema must be {"fields": [...]}')
    items = raw["fields"]
    if not 1 <= len(items) <= _MAX_FIELDS:
        raise _fail("credential_schema", f"a credential schema has 1 to {_MAX_FIELDS} fields")
    schema = tuple(_parse_field(item, index) for index, item in enumerate(items))
    names = [f.name for f in schema]
    if len(set(names)) != len(names):
        raise _fail("credential_schema", "credential field names must be unique")
    return schema


def parse_params(auth_type: str, raw: dict[str, Any]) -> ProviderParams:
    extras: dict[str, str] = {}
    known = {*_FLAGS, _BROADER, "token_endpoint_auth_method", "credential_schema"}
    for key, value in raw.items():
        if key in known:
            continue
        if key in CORE_OAUTH_PARAMS:
            raise _fail(key, f"params.{key} is set by Nexus itself and cannot be overridden")
        if not _EXTRA_KEY.fullmatch(key) or not isinstance(value, str) or len(value) > _MAX_TEXT:
            raise _fail(
                key,
                f"params.{key} is not a known setting; extra authorization parameters "
                "must have short string values",
            )
        extras[key] = value
    if len(extras) > _MAX_EXTRA:
        raise _fail("", f"at most {_MAX_EXTRA} extra authorization parameters are allowed")
    method = _text(
        raw, "token_endpoint_auth_method", "token_endpoint_auth_method", "client_secret_basic"
    )
    if method not in TOKEN_ENDPOINT_AUTH_METHODS:
        raise _fail(
            "token_endpoint_auth_method",
            "params.token_endpoint_auth_method must be one of "
            + ", ".join(TOKEN_ENDPOINT_AUTH_METHODS),
        )
    schema = _parse_schema(raw["credential_schema"]) if "credential_schema" in raw else ()
    if auth_type == "api_key" and not schema:
        raise _fail(
            "credential_schema",
            "api_key providers need params.credential_schema naming each field "
            "and where it is injected (header, query or body)",
        )
    if auth_type != "api_key" and schema:
        raise _fail(
            "credential_schema", f"a credential schema does not apply to {auth_type} providers"
        )
    if auth_type != "oauth2" and (extras or any(raw.get(f) for f in (*_FLAGS, _BROADER))):
        raise _fail("", f"OAuth parameters do not apply to {auth_type} providers")
    return ProviderParams(
        skip_scope_on_auth=_flag(raw, "skip_scope_on_auth", "skip_scope_on_auth", False),
        skip_scope_on_exchange=_flag(
            raw, "skip_scope_on_exchange", "skip_scope_on_exchange", False
        ),
        supports_scope_narrowing=_flag(
            raw, "supports_scope_narrowing", "supports_scope_narrowing", False
        ),
        revoke_narrowed_tokens=_flag(
            raw, "revoke_narrowed_tokens", "revoke_narrowed_tokens", False
        ),
        authorization_response_iss_parameter_supported=_flag(
            raw,
            "authorization_response_iss_parameter_supported",
            "authorization_response_iss_parameter_supported",
            False,
        ),
        allow_broader_session_tokens=_flag(raw, _BROADER, _BROADER, False)
        if _BROADER in raw
        else None,
        token_endpoint_auth_method=method,
        auth_params=MappingProxyType(extras),
        credential_schema=schema,
    )
