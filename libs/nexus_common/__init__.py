"""Shared foundations of the Nexus services; nothing service-specific."""

from __future__ import annotations

from ._auth import (
    API_KEY_HEADER,
    CALLER_HEADER,
    INTERNAL_TOKEN_HEADER,
    ApiKeySet,
    Caller,
    admin_authenticator,
    current_caller,
    internal_authenticator,
)
from ._client import InternalClient
from ._db import SqlUnitOfWork, create_engine, migrate, sync_url
from ._errors import (
    ERROR_DOMAIN,
    AlreadyExists,
    DependencyUnavailable,
    DiscoveryDocumentInvalid,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    InvalidPageToken,
    MalformedJson,
    NexusError,
    NotFound,
    PermissionDenied,
    ProviderAlreadyExists,
    ProviderDeleted,
    ProviderNotFound,
    RemoteError,
    RequestTooLarge,
    Unauthenticated,
    Unavailable,
    UnknownField,
    ValidationFailed,
)
from ._interceptors import PUBLIC_METHOD_PREFIXES, to_grpc_status
from ._keyring import Keyring, KeyringError, generate_key_spec
from ._logging import configure_logging, redact
from ._paging import decode_page_token, encode_page_token, page_size
from ._server import MAX_MESSAGE_BYTES, NexusServer, build_server, run_until_signalled
from ._settings import ConfigError, Env

__all__ = [
    "API_KEY_HEADER",
    "CALLER_HEADER",
    "ERROR_DOMAIN",
    "INTERNAL_TOKEN_HEADER",
    "MAX_MESSAGE_BYTES",
    "PUBLIC_METHOD_PREFIXES",
    "AlreadyExists",
    "ApiKeySet",
    "Caller",
    "ConfigError",
    "DependencyUnavailable",
    "DiscoveryDocumentInvalid",
    "Env",
    "FailedPrecondition",
    "Internal",
    "InternalClient",
    "InvalidArgument",
    "InvalidPageToken",
    "Keyring",
    "KeyringError",
    "MalformedJson",
    "NexusError",
    "NexusServer",
    "NotFound",
    "PermissionDenied",
    "ProviderAlreadyExists",
    "ProviderDeleted",
    "ProviderNotFound",
    "RemoteError",
    "RequestTooLarge",
    "SqlUnitOfWork",
    "Unauthenticated",
    "Unavailable",
    "UnknownField",
    "ValidationFailed",
    "admin_authenticator",
    "build_server",
    "configure_logging",
    "create_engine",
    "current_caller",
    "decode_page_token",
    "encode_page_token",
    "generate_key_spec",
    "internal_authenticator",
    "migrate",
    "page_size",
    "redact",
    "run_until_signalled",
    "sync_url",
    "to_grpc_status",
]
