"""OpenID Connect Discovery 1.0 document rules (pure).

Section 4.3: the ``issuer`` in the document must be identical to the issuer
the document was fetched for, or the document must not be used. Section 3
requires ``authorization_endpoint``, ``jwks_uri`` and (for the code flow)
``token_endpoint``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nexus_common import DiscoveryDocumentInvalid

from .urls import url_problem

__all__ = ["Discovery", "DiscoveryStatus", "discovery_path", "parse_discovery_document"]

WELL_KNOWN_PATH = "/.well-known/openid-configuration"
_REQUIRED_ENDPOINTS = ("authorization_endpoint", "token_endpoint", "jwks_uri")
_OPTIONAL_ENDPOINTS = ("userinfo_endpoint", "revocation_endpoint")


class DiscoveryStatus:
    DISABLED = "disabled"
    PENDING = "pending"
    COMPLETE = "complete"


@dataclass(frozen=True)
class Discovery:
    status: str = DiscoveryStatus.DISABLED
    reason: str = ""
    fetched_at: datetime | None = None
    attempted_at: datetime | None = None
    authorization_endpoint: str = ""
    token_endpoint: str = ""
    userinfo_endpoint: str = ""
    jwks_uri: str = ""
    revocation_endpoint: str = ""
    scopes_supported: tuple[str, ...] = ()
    token_endpoint_auth_methods_supported: tuple[str, ...] = field(default=())
    # RFC 9207 §3: the provider puts ``iss`` in every authorization response.
    authorization_response_iss_parameter_supported: bool = False

    @property
    def is_complete(self) -> bool:
        return self.status == DiscoveryStatus.COMPLETE

    @classmethod
    def pending(cls, reason: str, attempted_at: datetime | None) -> Discovery:
        return cls(status=DiscoveryStatus.PENDING, reason=reason, attempted_at=attempted_at)


def discovery_path(issuer: str) -> str:
    return issuer.rstrip("/") + WELL_KNOWN_PATH


def _string_list(document: dict[str, Any], key: str) -> tuple[str, ...]:
    value = document.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DiscoveryDocumentInvalid(
            f"the discovery document's {key} is not a list of strings", field=key
        )
    return tuple(value)


def parse_discovery_document(issuer: str, document: Any, fetched_at: datetime) -> Discovery:
    if not isinstance(document, dict):
        raise DiscoveryDocumentInvalid("the discovery document is not a JSON object")
    if document.get("issuer") != issuer:
        raise DiscoveryDocumentInvalid(
            "the discovery document's issuer does not match the provider's issuer "
            f"({issuer}); it cannot be trusted",
            field="issuer",
        )
    endpoints: dict[str, str] = {}
    for key in (*_REQUIRED_ENDPOINTS, *_OPTIONAL_ENDPOINTS):
        value = document.get(key)
        if value is None and key in _OPTIONAL_ENDPOINTS:
            continue
        if not isinstance(value, str) or not value:
            raise DiscoveryDocumentInvalid(f"the discovery document lacks {key}", field=key)
        problem = url_problem(value)
        if problem is not None:
            raise DiscoveryDocumentInvalid(f"the discovery document's {key} {problem}", field=key)
        endpoints[key] = value
    if "code" not in _string_list(document, "response_types_supported") and (
        "response_types_supported" in document
    ):
        raise DiscoveryDocumentInvalid(
            "the issuer does not support the authorization code flow",
            field="response_types_supported",
        )
    sends_iss = document.get("authorization_response_iss_parameter_supported", False)
    if not isinstance(sends_iss, bool):
        raise DiscoveryDocumentInvalid(
            "the discovery document's authorization_response_iss_parameter_supported "
            "is not a boolean",
            field="authorization_response_iss_parameter_supported",
        )
    return Discovery(
        status=DiscoveryStatus.COMPLETE,
        authorization_response_iss_parameter_supported=sends_iss,
        fetched_at=fetched_at,
        attempted_at=fetched_at,
        scopes_supported=_string_list(document, "scopes_supported"),
        token_endpoint_auth_methods_supported=_string_list(
            document, "token_endpoint_auth_methods_supported"
        ),
        **endpoints,
    )
