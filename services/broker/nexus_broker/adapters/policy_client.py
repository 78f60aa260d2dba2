"""Asking the policy service to decide a session request."""

from __future__ import annotations

from dataclasses import dataclass

from nexus.policy.v1 import policy_pb2, policy_pb2_grpc
from nexus_common import InternalClient

from ..domain.sessions import UserStamp

__all__ = ["PolicyClient", "PolicyDecision"]


@dataclass(frozen=True)
class PolicyDecision:
    scopes: tuple[str, ...]
    user: UserStamp | None


class PolicyClient:
    def __init__(self, client: InternalClient) -> None:
        self._client = client
        self._stub = policy_pb2_grpc.PolicyServiceStub(client.channel)

    async def evaluate(
        self, agent_id: str, scopes: list[str], user_context_token: str | None
    ) -> PolicyDecision:
        """Raises the policy service's denial unchanged (its reason names the gate)."""
        request = policy_pb2.EvaluateSessionRequest(agent_id=agent_id, scopes=scopes)
        if user_context_token is not None:
            request.user_context_token = user_context_token
        decision = await self._client.call(self._stub.EvaluateSession, request)
        user = (
            UserStamp(decision.user.user_id, decision.user.tenant_id, decision.user.clearance_level)
            if decision.HasField("user")
            else None
        )
        return PolicyDecision(tuple(decision.scopes), user)
