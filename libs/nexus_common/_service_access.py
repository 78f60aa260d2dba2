"""Which service may call which method of another: the one allowlist.

With mutual TLS on, a broker or policy server reads the caller's service from
its certificate (``peer_service``) and serves only the methods listed for it
here; anything else is ``SERVICE_METHOD_NOT_ALLOWED``, whatever token or caller
the call carries. Deny by default: a method added to a service is reachable by
no other until it is listed. Health and reflection are not listed; they are
answered before any caller is looked at.

    gateway → broker   the public surface: what the gateway's API and browser
                       pages forward (not EndAgentSessions, not RecordAuditEvents)
    gateway → policy   the agent registry, agent keys and the agent change feed
    policy  → broker   EndAgentSessions (an agent was disabled, deleted or
                       re-keyed) and RecordAuditEvents (its audit outbox)
    broker  → policy   AuthorizeAccess, CheckSessionStanding, the change feed

Only the gateway establishes callers, so only it may name one
(``CALLER_ASSERTING``); another service acts as itself.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.descriptor import FileDescriptor
from nexus.broker.v1 import audit_pb2, connections_pb2, providers_pb2, sessions_pb2
from nexus.policy.v1 import agents_pb2, policy_pb2

from ._errors import ServiceMethodNotAllowed

__all__ = ["CALLER_ASSERTING", "SERVICE_METHODS", "check_service_call"]


def _methods(file: FileDescriptor, service: str, *names: str) -> frozenset[str]:
    """Full method paths; a name the service lacks fails at import, not at call."""
    descriptor = file.services_by_name[service]
    for name in names:
        descriptor.methods_by_name[name]
    return frozenset(f"/{descriptor.full_name}/{name}" for name in names)


_WATCH = _methods(policy_pb2.DESCRIPTOR, "PolicyService", "WatchAgentChanges")

SERVICE_METHODS: Mapping[str, frozenset[str]] = {
    "gateway": _methods(
        providers_pb2.DESCRIPTOR,
        "ProviderRegistryService",
        "CreateProvider",
        "GetProvider",
        "ListProviders",
        "UpdateProvider",
        "DeleteProvider",
        "ListProviderMetadata",
        "ConfirmProviderEndpoints",
    )
    | _methods(audit_pb2.DESCRIPTOR, "AuditLogService", "ListAuditEvents")
    | _methods(
        connections_pb2.DESCRIPTOR,
        "ConnectionService",
        "RequestConnection",
        "BeginAuthorization",
        "CompleteAuthorization",
        "GetCaptureForm",
        "CaptureCredentials",
        "SubmitCaptureForm",
        "CheckConnection",
        "GetToken",
        "RefreshConnection",
        "ListConnections",
        "RevokeConnection",
        "DeleteConnection",
        "ConfirmConnection",
    )
    | _methods(
        sessions_pb2.DESCRIPTOR,
        "SessionService",
        "CreateAgentSession",
        "CreateOboSession",
        "CloseAgentSession",
        "IntrospectSession",
        "GetJwks",
    )
    | _methods(
        agents_pb2.DESCRIPTOR,
        "AgentRegistryService",
        "CreateAgent",
        "GetAgent",
        "ListAgents",
        "UpdateAgent",
        "DeleteAgent",
        "RotateAgentKey",
        "AuthenticateAgent",
    )
    | _WATCH,
    "policy": _methods(sessions_pb2.DESCRIPTOR, "SessionService", "EndAgentSessions")
    | _methods(audit_pb2.DESCRIPTOR, "AuditLogService", "RecordAuditEvents"),
    "broker": _methods(
        policy_pb2.DESCRIPTOR, "PolicyService", "AuthorizeAccess", "CheckSessionStanding"
    )
    | _WATCH,
}

CALLER_ASSERTING = frozenset({"gateway"})


def check_service_call(service: str, method: str) -> None:
    """Raises unless ``service`` may call ``method``."""
    if method not in SERVICE_METHODS.get(service, frozenset()):
        raise ServiceMethodNotAllowed(
            f"the {service} service may not call {method}", service=service
        )
