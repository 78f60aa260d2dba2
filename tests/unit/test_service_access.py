"""The services' method allowlist, as a table: which service may call what."""

from __future__ import annotations

import pytest
from nexus.broker.v1 import audit_pb2, connections_pb2, providers_pb2, sessions_pb2
from nexus.policy.v1 import agents_pb2, policy_pb2
from nexus_common import SERVICE_METHODS, ServiceMethodNotAllowed, check_service_call

END_SESSIONS = "/nexus.broker.v1.SessionService/EndAgentSessions"
RECORD_AUDIT = "/nexus.broker.v1.AuditLogService/RecordAuditEvents"
GET_TOKEN = "/nexus.broker.v1.ConnectionService/GetToken"
CREATE_AGENT = "/nexus.policy.v1.AgentRegistryService/CreateAgent"
AUTHORIZE = "/nexus.policy.v1.PolicyService/AuthorizeAccess"
STANDING = "/nexus.policy.v1.PolicyService/CheckSessionStanding"
WATCH = "/nexus.policy.v1.PolicyService/WatchAgentChanges"
CHECK_SCOPES = "/nexus.policy.v1.PolicyService/CheckScopes"

TABLE = [
    # service, method, allowed
    ("gateway", GET_TOKEN, True),
    ("gateway", CREATE_AGENT, True),
    ("gateway", WATCH, True),
    ("gateway", END_SESSIONS, False),
    ("gateway", RECORD_AUDIT, False),
    ("gateway", AUTHORIZE, False),
    ("policy", END_SESSIONS, True),
    ("policy", RECORD_AUDIT, True),
    ("policy", GET_TOKEN, False),
    ("policy", "/nexus.broker.v1.ProviderRegistryService/CreateProvider", False),
    ("broker", AUTHORIZE, True),
    ("broker", STANDING, True),
    ("broker", WATCH, True),
    ("broker", CREATE_AGENT, False),
    ("broker", "/nexus.policy.v1.AgentRegistryService/AuthenticateAgent", False),
    ("broker", CHECK_SCOPES, False),
    ("stranger", GET_TOKEN, False),
]


@pytest.mark.parametrize(("service", "method", "allowed"), TABLE)
def test_each_service_reaches_only_its_methods(service: str, method: str, allowed: bool) -> None:
    if allowed:
        check_service_call(service, method)
    else:
        with pytest.raises(ServiceMethodNotAllowed) as refused:
            check_service_call(service, method)
        assert refused.value.metadata == {"service": service}


def _every_method() -> set[str]:
    files = [audit_pb2, connections_pb2, providers_pb2, sessions_pb2, agents_pb2, policy_pb2]
    return {
        f"/{service.full_name}/{method.name}"
        for module in files
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def test_the_gateway_reaches_every_internal_method_but_the_service_only_ones() -> None:
    service_only = {END_SESSIONS, RECORD_AUDIT, AUTHORIZE, STANDING, CHECK_SCOPES}
    assert SERVICE_METHODS["gateway"] == _every_method() - service_only
