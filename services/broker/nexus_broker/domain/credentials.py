"""What an agent receives for a connection: a strategy and its credentials.

The strategy tells the agent how to apply the credentials; for ``api_key``
it names each field and where it goes (header, query or body).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from nexus_common import ValidationFailed

from .connections import TokenSet
from .params import CredentialField
from .providers import AuthType, Provider

__all__ = [
    "TokenPayload",
    "capture_fields",
    "oauth2_payload",
    "static_payload",
    "validate_static_credentials",
]

_MAX_VALUE = 4096


def capture_fields(provider: Provider) -> tuple[CredentialField, ...]:
    """The fields a user supplies for a static-credential provider."""
    if provider.spec.auth_type == AuthType.BASIC_AUTH:
        return (
            CredentialField("username", "header", "Authorization", "Username", secret=False),
            CredentialField("password", "header", "Authorization", "Password"),
        )
    return provider.params.credential_schema


def validate_static_credentials(provider: Provider, values: Mapping[str, str]) -> dict[str, str]:
    """Check submitted values against the provider's schema; names the field at fault
    but never echoes a value."""
    fields = {f.name: f for f in capture_fields(provider)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValidationFailed(
            f"{provider.name} takes no credential named {', '.join(unknown)}", field=unknown[0]
        )
    accepted: dict[str, str] = {}
    for name, spec in fields.items():
        value = values.get(name, "")
        if not value.strip():
            if spec.required:
                raise ValidationFailed(f"{spec.label} is required", field=name)
            continue
        problem = _value_problem(provider, spec, value)
        if problem:
            raise ValidationFailed(f"{spec.label} {problem}", field=name)
        accepted[name] = value
    return accepted


def _value_problem(provider: Provider, spec: CredentialField, value: str) -> str:
    """Why a value cannot be sent where the schema puts it; empty when it can."""
    if len(value) > _MAX_VALUE:
        return f"is longer than {_MAX_VALUE} characters"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return "contains control characters"
    if provider.spec.auth_type == AuthType.BASIC_AUTH:
        # RFC 7617 §2: the user-id ends at the first colon; both halves travel as UTF-8.
        return "cannot contain a colon" if spec.name == "username" and ":" in value else ""
    if spec.location == "header" and not value.isascii():
        # RFC 9110 §5.5: field values are ASCII in practice (obs-text is obsolete).
        return "must be ASCII: it is sent in an HTTP header"
    return ""


TokenPayload = tuple[dict[str, Any], dict[str, Any], datetime | None]


def oauth2_payload(tokens: TokenSet) -> TokenPayload:
    """The documented shape: the strategy says Bearer, so only the token and
    its expiry are credentials; the refresh token never leaves the vault."""
    credentials: dict[str, Any] = {"access_token": tokens.access_token}
    if tokens.expires_at is not None:
        credentials["expires_at"] = int(tokens.expires_at.timestamp())
    return {"type": AuthType.OAUTH2}, credentials, tokens.expires_at


def static_payload(provider: Provider, values: Mapping[str, str]) -> TokenPayload:
    if provider.spec.auth_type == AuthType.BASIC_AUTH:
        return {"type": AuthType.BASIC_AUTH}, dict(values), None
    strategy = {
        "type": AuthType.API_KEY,
        "fields": [
            {"name": f.name, "in": f.location, "key": f.key}
            for f in provider.params.credential_schema
            if f.name in values
        ],
    }
    return strategy, dict(values), None
