"""The one error tree of Nexus. Each leaf has a stable AIP-193 ``reason``.

    NexusError
    ├── InvalidArgument                 INVALID_ARGUMENT
    │   ├── ValidationFailed            reason VALIDATION_FAILED
    │   ├── InvalidPageToken            reason INVALID_PAGE_TOKEN
    │   ├── MalformedJson               reason MALFORMED_JSON
    │   ├── MalformedRequest            reason MALFORMED_REQUEST
    │   ├── UnknownField                reason UNKNOWN_FIELD
    │   ├── DiscoveryDocumentInvalid    reason DISCOVERY_DOCUMENT_INVALID
    │   ├── StateInvalid                reason STATE_INVALID
    │   ├── ReturnUrlNotAllowed         reason RETURN_URL_NOT_ALLOWED
    │   ├── ScopeNotOffered             reason SCOPE_NOT_OFFERED
    │   ├── OutboundAddressNotAllowed   reason OUTBOUND_ADDRESS_NOT_ALLOWED (metadata: field)
    │   ├── CredentialsRejected         reason CREDENTIALS_REJECTED
    │   ├── IssuerMismatch              reason ISSUER_MISMATCH
    │   ├── CallbackProviderMismatch    reason CALLBACK_PROVIDER_MISMATCH
    │   └── UserContextInvalid          reason USER_CONTEXT_INVALID
    ├── Unauthenticated                 UNAUTHENTICATED, reason UNAUTHENTICATED
    │   ├── UserTokenInvalid            reason USER_TOKEN_INVALID
    │   ├── CallerProofInvalid          reason CALLER_PROOF_INVALID
    │   └── ServiceIdentityRequired     reason SERVICE_IDENTITY_REQUIRED
    ├── PermissionDenied                PERMISSION_DENIED, reason PERMISSION_DENIED
    │   ├── AgentDisabled               reason AGENT_DISABLED
    │   ├── AgentMismatch               reason AGENT_MISMATCH
    │   ├── AgentScopeNotAllowed        reason AGENT_SCOPE_NOT_ALLOWED (metadata: denied_scopes)
    │   ├── UserPermissionMissing       reason USER_PERMISSION_MISSING (metadata: missing)
    │   ├── ScopeNotGranted             reason SCOPE_NOT_GRANTED (metadata: missing_scopes)
    │   ├── CallerNotAllowed            reason CALLER_NOT_ALLOWED
    │   ├── AgentNotBound               reason AGENT_NOT_BOUND (metadata: agent_id)
    │   ├── ProviderNotBound            reason PROVIDER_NOT_BOUND (metadata: provider)
    │   ├── WorkspaceNotBound           reason WORKSPACE_NOT_BOUND (metadata: workspace_id)
    │   ├── AgentOboOnly                reason AGENT_OBO_ONLY
    │   ├── ConnectionExceedsAgentScopes reason CONNECTION_EXCEEDS_AGENT_SCOPES
    │   ├── UserWorkspaceNotOwned       reason USER_WORKSPACE_NOT_OWNED (metadata: workspace_id)
    │   ├── TokenBroaderThanSession     reason TOKEN_BROADER_THAN_SESSION (metadata: token_scopes)
    │   ├── BrowserMismatch             reason BROWSER_MISMATCH
    │   ├── ServiceMethodNotAllowed     reason SERVICE_METHOD_NOT_ALLOWED (metadata: service)
    │   └── ConfirmationNeedsAnotherAdmin reason CONFIRMATION_NEEDS_ANOTHER_ADMIN
    ├── NotFound                        NOT_FOUND
    │   ├── ProviderNotFound            reason PROVIDER_NOT_FOUND
    │   ├── ConnectionNotFound          reason CONNECTION_NOT_FOUND
    │   ├── AgentNotFound               reason AGENT_NOT_FOUND
    │   └── SessionNotFound             reason SESSION_NOT_FOUND
    ├── AlreadyExists                   ALREADY_EXISTS
    │   ├── ProviderAlreadyExists       reason PROVIDER_ALREADY_EXISTS
    │   └── AgentAlreadyExists          reason AGENT_ALREADY_EXISTS
    ├── ConcurrentModification          ABORTED, reason CONCURRENT_MODIFICATION
    ├── FailedPrecondition              FAILED_PRECONDITION
    │   ├── ProviderDeleted             reason PROVIDER_DELETED
    │   ├── SecretRequiredForEndpointChange
    │   │                   reason SECRET_REQUIRED_FOR_ENDPOINT_CHANGE (metadata: fields)
    │   ├── ProviderEndpointsPending    reason PROVIDER_ENDPOINTS_PENDING (metadata: provider)
    │   ├── ConnectionNotActive         reason CONNECTION_NOT_ACTIVE (metadata: status)
    │   ├── RefreshNotSupported         reason REFRESH_NOT_SUPPORTED
    │   ├── ConnectionReauthRequired    reason CONNECTION_REAUTH_REQUIRED
    │   ├── NoConnection                reason NO_CONNECTION
    │   ├── ConnectionAmbiguous         reason CONNECTION_AMBIGUOUS
    │   ├── SessionNotSupported         reason SESSION_NOT_SUPPORTED
    │   ├── ConfirmationRequired        reason CONFIRMATION_REQUIRED
    │   └── CaptureAttemptsExhausted    reason CAPTURE_ATTEMPTS_EXHAUSTED
    ├── RequestTooLarge                 RESOURCE_EXHAUSTED, reason REQUEST_TOO_LARGE
    ├── RefreshRateLimited              RESOURCE_EXHAUSTED, reason REFRESH_RATE_LIMITED
    │                                   (metadata: retry_after_seconds)
    ├── Unavailable                     UNAVAILABLE
    │   ├── DependencyUnavailable       reason DEPENDENCY_UNAVAILABLE
    │   ├── DatabaseUnavailable         reason DATABASE_UNAVAILABLE (RetryInfo)
    │   ├── ProviderUnavailable         reason PROVIDER_UNAVAILABLE
    │   ├── BackendAuthUnavailable      reason BACKEND_AUTH_UNAVAILABLE
    │   └── ChangeFeedUnavailable       reason CHANGE_FEED_UNAVAILABLE
    ├── Internal                        INTERNAL, reason INTERNAL
    └── RemoteError                     whatever another Nexus service answered

Messages are written for a person and must never contain a secret or an
upstream response body. ``metadata`` carries machine-readable specifics such
as the offending field; ``retry_after_seconds``, when set, becomes a
``google.rpc.RetryInfo``. Both message and metadata may echo what a caller sent, so both are clipped
(``MAX_MESSAGE_CHARS``, ``MAX_METADATA_CHARS``): an echoed 6 KB id must not
make the status itself too large to send.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "ERROR_DOMAIN",
    "MAX_MESSAGE_CHARS",
    "MAX_METADATA_CHARS",
    "AgentAlreadyExists",
    "AgentDisabled",
    "AgentMismatch",
    "AgentNotBound",
    "AgentNotFound",
    "AgentOboOnly",
    "AgentScopeNotAllowed",
    "AlreadyExists",
    "BackendAuthUnavailable",
    "BrowserMismatch",
    "CallbackProviderMismatch",
    "CallerNotAllowed",
    "CallerProofInvalid",
    "CaptureAttemptsExhausted",
    "ChangeFeedUnavailable",
    "ConcurrentModification",
    "ConfirmationInvalid",
    "ConfirmationNeedsAnotherAdmin",
    "ConfirmationRequired",
    "ConnectionAmbiguous",
    "ConnectionExceedsAgentScopes",
    "ConnectionNotActive",
    "ConnectionNotFound",
    "ConnectionReauthRequired",
    "CredentialsRejected",
    "DatabaseUnavailable",
    "DependencyUnavailable",
    "DiscoveryDocumentInvalid",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "InvalidPageToken",
    "IssuerMismatch",
    "MalformedJson",
    "MalformedRequest",
    "NexusError",
    "NoConnection",
    "NotFound",
    "OutboundAddressNotAllowed",
    "PermissionDenied",
    "ProviderAlreadyExists",
    "ProviderDeleted",
    "ProviderEndpointsPending",
    "ProviderNotBound",
    "ProviderNotFound",
    "ProviderUnavailable",
    "RefreshNotSupported",
    "RefreshRateLimited",
    "RemoteError",
    "RequestTooLarge",
    "ReturnUrlNotAllowed",
    "ScopeNotGranted",
    "ScopeNotOffered",
    "SecretRequiredForEndpointChange",
    "ServiceIdentityRequired",
    "ServiceMethodNotAllowed",
    "SessionNotFound",
    "SessionNotSupported",
    "StateInvalid",
    "TokenBroaderThanSession",
    "Unauthenticated",
    "Unavailable",
    "UnknownField",
    "UserContextInvalid",
    "UserPermissionMissing",
    "UserTokenInvalid",
    "UserWorkspaceNotOwned",
    "ValidationFailed",
    "WorkspaceNotBound",
]

ERROR_DOMAIN = "nexus.dev"
# gRPC sends the status twice (grpc-message, and grpc-status-details-bin in
# base64) within a default 8 KiB of headers: these bounds keep it well inside.
MAX_MESSAGE_CHARS = 1024
MAX_METADATA_CHARS = 256


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    marker = f"…({len(text)} characters)"
    return text[: max(0, limit - len(marker))] + marker


class NexusError(Exception):
    """Base of every error that a Nexus API may return."""

    reason: str = "UNKNOWN"
    # A grpc.StatusCode name; kept a string so the domain never imports grpc.
    grpc_status: str = "UNKNOWN"
    # When to try again, for faults that pass by themselves.
    retry_after_seconds: float | None = None

    def __init__(self, message: str, **metadata: str) -> None:
        message = clip(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        self.metadata: Mapping[str, str] = {
            clip(key, MAX_METADATA_CHARS): clip(value, MAX_METADATA_CHARS)
            for key, value in metadata.items()
        }


class RemoteError(NexusError):
    """An error another Nexus service returned, passed on unchanged."""

    def __init__(self, grpc_status: str, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message, **metadata)
        self.grpc_status = grpc_status
        self.reason = reason


class InvalidArgument(NexusError):
    reason = "INVALID_ARGUMENT"
    grpc_status = "INVALID_ARGUMENT"


class ValidationFailed(InvalidArgument):
    reason = "VALIDATION_FAILED"


class InvalidPageToken(InvalidArgument):
    reason = "INVALID_PAGE_TOKEN"


class MalformedJson(InvalidArgument):
    reason = "MALFORMED_JSON"


class MalformedRequest(InvalidArgument):
    """A gRPC request whose bytes are not the method's request message."""

    reason = "MALFORMED_REQUEST"


class UnknownField(InvalidArgument):
    reason = "UNKNOWN_FIELD"


class DiscoveryDocumentInvalid(InvalidArgument):
    reason = "DISCOVERY_DOCUMENT_INVALID"


class StateInvalid(InvalidArgument):
    reason = "STATE_INVALID"


class ConfirmationInvalid(InvalidArgument):
    """A confirmation code that is wrong, used, expired, or for a connection
    that awaits none."""

    reason = "CONFIRMATION_INVALID"


class ReturnUrlNotAllowed(InvalidArgument):
    reason = "RETURN_URL_NOT_ALLOWED"


class ScopeNotOffered(InvalidArgument):
    reason = "SCOPE_NOT_OFFERED"


class OutboundAddressNotAllowed(InvalidArgument):
    """An endpoint is, or resolves to, an address Nexus may not call (see ``_outbound``)."""

    reason = "OUTBOUND_ADDRESS_NOT_ALLOWED"


class CredentialsRejected(InvalidArgument):
    reason = "CREDENTIALS_REJECTED"


class UserContextInvalid(InvalidArgument):
    """The user backend vouched for a user Nexus cannot act for (an id too long to keep)."""

    reason = "USER_CONTEXT_INVALID"


class IssuerMismatch(InvalidArgument):
    """The authorization response came without the provider's RFC 9207 ``iss``
    where it must have one, or with another issuer's (a mix-up, RFC 9700 §4.4)."""

    reason = "ISSUER_MISMATCH"


class CallbackProviderMismatch(InvalidArgument):
    """An authorization response reached another provider's callback than the
    one its state was issued for (a mix-up, RFC 9700 §4.4)."""

    reason = "CALLBACK_PROVIDER_MISMATCH"


class Unauthenticated(NexusError):
    reason = "UNAUTHENTICATED"
    grpc_status = "UNAUTHENTICATED"


class PermissionDenied(NexusError):
    reason = "PERMISSION_DENIED"
    grpc_status = "PERMISSION_DENIED"


class CallerProofInvalid(Unauthenticated):
    """A service call named a caller without the gateway's proof for it, or
    with one that is forged, expired or made for another method."""

    reason = "CALLER_PROOF_INVALID"


class ServiceIdentityRequired(Unauthenticated):
    """Mutual TLS is on and the client's certificate names no Nexus service."""

    reason = "SERVICE_IDENTITY_REQUIRED"


class ServiceMethodNotAllowed(PermissionDenied):
    """A service called a method that is not on its allowlist."""

    reason = "SERVICE_METHOD_NOT_ALLOWED"


class NotFound(NexusError):
    reason = "NOT_FOUND"
    grpc_status = "NOT_FOUND"


class ProviderNotFound(NotFound):
    reason = "PROVIDER_NOT_FOUND"


class ConnectionNotFound(NotFound):
    reason = "CONNECTION_NOT_FOUND"


class AlreadyExists(NexusError):
    reason = "ALREADY_EXISTS"
    grpc_status = "ALREADY_EXISTS"


class ProviderAlreadyExists(AlreadyExists):
    reason = "PROVIDER_ALREADY_EXISTS"


class ConcurrentModification(NexusError):
    reason = "CONCURRENT_MODIFICATION"
    grpc_status = "ABORTED"


class FailedPrecondition(NexusError):
    reason = "FAILED_PRECONDITION"
    grpc_status = "FAILED_PRECONDITION"


class ProviderDeleted(FailedPrecondition):
    reason = "PROVIDER_DELETED"


class SecretRequiredForEndpointChange(FailedPrecondition):
    """An endpoint of a provider holding a client secret changes, and the
    request does not give the secret again: the stored one must not follow."""

    reason = "SECRET_REQUIRED_FOR_ENDPOINT_CHANGE"


class ProviderEndpointsPending(FailedPrecondition):
    """A provider's token endpoints moved while it had connections: nothing
    is sent there until an admin confirms the move (``:confirmEndpoints``)."""

    reason = "PROVIDER_ENDPOINTS_PENDING"


class RequestTooLarge(NexusError):
    reason = "REQUEST_TOO_LARGE"
    grpc_status = "RESOURCE_EXHAUSTED"


class ConnectionNotActive(FailedPrecondition):
    reason = "CONNECTION_NOT_ACTIVE"


class RefreshNotSupported(FailedPrecondition):
    reason = "REFRESH_NOT_SUPPORTED"


class ConnectionReauthRequired(FailedPrecondition):
    reason = "CONNECTION_REAUTH_REQUIRED"


class Unavailable(NexusError):
    reason = "UNAVAILABLE"
    grpc_status = "UNAVAILABLE"


class DependencyUnavailable(Unavailable):
    reason = "DEPENDENCY_UNAVAILABLE"


class DatabaseUnavailable(Unavailable):
    """The database could not be reached or dropped the connection.

    ``stale`` says the connection was one the pool handed out after the
    database had dropped it, before anything was committed: a fresh
    connection may succeed at once."""

    reason = "DATABASE_UNAVAILABLE"
    retry_after_seconds = 1.0

    def __init__(self, message: str, *, stale: bool = False, **metadata: str) -> None:
        super().__init__(message, **metadata)
        self.stale = stale


class Internal(NexusError):
    reason = "INTERNAL"
    grpc_status = "INTERNAL"


class ProviderUnavailable(Unavailable):
    reason = "PROVIDER_UNAVAILABLE"


class ChangeFeedUnavailable(Unavailable):
    """This replica cannot hear change notices, so it cannot pass them on:
    a watcher must turn its caches off and ask another replica, or again."""

    reason = "CHANGE_FEED_UNAVAILABLE"


class UserTokenInvalid(Unauthenticated):
    """The user context token of an on-behalf-of request was rejected."""

    reason = "USER_TOKEN_INVALID"


class AgentDisabled(PermissionDenied):
    reason = "AGENT_DISABLED"


class AgentMismatch(PermissionDenied):
    """An agent asked to act as a different agent."""

    reason = "AGENT_MISMATCH"


class AgentScopeNotAllowed(PermissionDenied):
    reason = "AGENT_SCOPE_NOT_ALLOWED"


class UserPermissionMissing(PermissionDenied):
    reason = "USER_PERMISSION_MISSING"


class ScopeNotGranted(PermissionDenied):
    """The connection was never granted a requested scope."""

    reason = "SCOPE_NOT_GRANTED"


class AgentNotFound(NotFound):
    reason = "AGENT_NOT_FOUND"


class SessionNotFound(NotFound):
    reason = "SESSION_NOT_FOUND"


class AgentAlreadyExists(AlreadyExists):
    reason = "AGENT_ALREADY_EXISTS"


class NoConnection(FailedPrecondition):
    reason = "NO_CONNECTION"


class ConnectionAmbiguous(FailedPrecondition):
    """Several connections match and the caller named none of them."""

    reason = "CONNECTION_AMBIGUOUS"


class SessionNotSupported(FailedPrecondition):
    reason = "SESSION_NOT_SUPPORTED"


class ConfirmationRequired(FailedPrecondition):
    """A connection asked not to be confirmed where the deployment requires it:
    an unconfirmed link could bind another person's account (RFC 9700 §4.7)."""

    reason = "CONFIRMATION_REQUIRED"


class BackendAuthUnavailable(Unavailable):
    """The customer's user backend could not be asked; OBO fails closed."""

    reason = "BACKEND_AUTH_UNAVAILABLE"


class CallerNotAllowed(PermissionDenied):
    """The call came with a credential that may not reach credentials at all."""

    reason = "CALLER_NOT_ALLOWED"


class AgentNotBound(PermissionDenied):
    """The agent has no bindings, and this deployment refuses unbound agents."""

    reason = "AGENT_NOT_BOUND"


class ProviderNotBound(PermissionDenied):
    reason = "PROVIDER_NOT_BOUND"


class WorkspaceNotBound(PermissionDenied):
    reason = "WORKSPACE_NOT_BOUND"


class AgentOboOnly(PermissionDenied):
    """The agent may act only on behalf of a user."""

    reason = "AGENT_OBO_ONLY"


class ConnectionExceedsAgentScopes(PermissionDenied):
    """GetToken would release a grant wider than the agent's allowed scopes."""

    reason = "CONNECTION_EXCEEDS_AGENT_SCOPES"


class UserWorkspaceNotOwned(PermissionDenied):
    """An on-behalf-of request reached for a workspace its user does not own."""

    reason = "USER_WORKSPACE_NOT_OWNED"


class TokenBroaderThanSession(PermissionDenied):
    """The provider cannot narrow its token to the session's scopes."""

    reason = "TOKEN_BROADER_THAN_SESSION"


class BrowserMismatch(PermissionDenied):
    """A browser other than the one that opened auth_url tried to continue it
    (connection injection, RFC 9700 §4.7)."""

    reason = "BROWSER_MISMATCH"


class ConfirmationNeedsAnotherAdmin(PermissionDenied):
    """The admin key that moved a provider's token endpoints may not also
    confirm the move (NEXUS_ENDPOINT_CONFIRMATION=another_admin)."""

    reason = "CONFIRMATION_NEEDS_ANOTHER_ADMIN"


class CaptureAttemptsExhausted(FailedPrecondition):
    """Every live credential check of a capture state is spent; the state is too."""

    reason = "CAPTURE_ATTEMPTS_EXHAUSTED"


class RefreshRateLimited(NexusError):
    reason = "REFRESH_RATE_LIMITED"
    grpc_status = "RESOURCE_EXHAUSTED"
