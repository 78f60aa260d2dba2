"""The policy service: wiring and its one thin servicer."""

from __future__ import annotations

import grpc
from nexus.policy.v1 import policy_pb2, policy_pb2_grpc
from nexus_common import NexusServer, build_server, internal_authenticator

from .domain.scopes import check_scopes
from .settings import PolicySettings

__all__ = ["PolicyServicer", "create_policy_server"]

SERVICE_NAMES = (policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,)


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    async def CheckScopes(
        self, request: policy_pb2.CheckScopesRequest, context: grpc.aio.ServicerContext
    ) -> policy_pb2.CheckScopesResponse:
        decision = check_scopes(request.requested_scopes, request.allowed_scopes)
        return policy_pb2.CheckScopesResponse(
            allowed=decision.allowed, denied_scopes=decision.denied
        )


def create_policy_server(settings: PolicySettings) -> NexusServer:
    servicer = PolicyServicer()
    return build_server(
        address=settings.listen,
        registrars=[lambda s: policy_pb2_grpc.add_PolicyServiceServicer_to_server(servicer, s)],
        service_names=SERVICE_NAMES,
        authenticate=internal_authenticator(settings.internal_tokens),
    )
