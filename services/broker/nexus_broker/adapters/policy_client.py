"""Asking the policy service, the one place that decides who may use a credential."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2
from nexus.policy.v1 import policy_pb2, policy_pb2_grpc
from nexus_common import AdminPrincipal, InternalClient, Principal

from ..domain.access import Action
from ..domain.connections import Connection
from ..domain.providers import Provider
from ..domain.sessions import UserStamp

__all__ = ["AccessGrant", "PolicyClient", "SessionAsk"]

_ACTIONS = {
    Action.GET_TOKEN: policy_pb2.AccessRequest.ACTION_GET_TOKEN,
    Action.REFRESH: policy_pb2.AccessRequest.ACTION_REFRESH,
    Action.AGENT_SESSION: policy_pb2.AccessRequest.ACTION_AGENT_SESSION,
    Action.OBO_SESSION: policy_pb2.AccessRequest.ACTION_OBO_SESSION,
}


@dataclass(frozen=True)
class SessionAsk:
    """What a session request adds to the question."""

    agent_id: str
    scopes: list[str]
    user_context_token: str | None = field(repr=False)
    workspace_id: str


@dataclass(frozen=True)
class AccessGrant:
    scopes: tuple[str, ...]
    user: UserStamp | None
    # When the user's token expires, for on-behalf-of sessions, if known.
    user_expires_at: datetime | None
    # Where a session may look for its connection; None for anywhere.
    workspaces: frozenset[str] | None
    # Credentials minted for the agent before this must not be handed out again.
    sessions_valid_after: datetime | None


def _principal(caller: Principal) -> policy_pb2.Principal:
    if isinstance(caller, AdminPrincipal):
        return policy_pb2.Principal(kind=policy_pb2.Principal.KIND_ADMIN, id=caller.key_name)
    return policy_pb2.Principal(kind=policy_pb2.Principal.KIND_AGENT, id=caller.agent_id)


class PolicyClient:
    def __init__(self, client: InternalClient) -> None:
        self._client = client
        self._stub = policy_pb2_grpc.PolicyServiceStub(client.channel)

    async def authorize(
        self,
        caller: Principal,
        action: str,
        provider: Provider,
        connection: Connection | None = None,
        granted_scopes: tuple[str, ...] = (),
        session: SessionAsk | None = None,
    ) -> AccessGrant:
        """Raises the policy service's denial unchanged (its reason names the rule)."""
        request = policy_pb2.AccessRequest(
            action=_ACTIONS[action],
            caller=_principal(caller),
            provider_id=provider.id,
            provider_name=provider.name,
        )
        if connection is not None:
            request.connection.CopyFrom(
                policy_pb2.ConnectionRef(
                    connection_id=connection.id,
                    workspace_id=connection.workspace_id,
                    granted_scopes=granted_scopes,
                )
            )
        if session is not None:
            request.agent_id = session.agent_id
            request.scopes.extend(session.scopes)
            request.workspace_id = session.workspace_id
            if session.user_context_token is not None:
                request.user_context_token = session.user_context_token
        decision = await self._client.call(self._stub.AuthorizeAccess, request)
        return _grant(decision)

    async def session_standing(self, agent_id: str, issued_at: datetime) -> bool:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(issued_at)
        answer = await self._client.call(
            self._stub.CheckSessionStanding,
            policy_pb2.SessionStandingRequest(agent_id=agent_id, issued_at=stamp),
        )
        return bool(answer.valid)


def _grant(decision: policy_pb2.AccessDecision) -> AccessGrant:
    user = decision.user if decision.HasField("user") else None
    return AccessGrant(
        scopes=tuple(decision.scopes),
        user=UserStamp(user.user_id, user.tenant_id, user.clearance_level) if user else None,
        user_expires_at=(
            datetime.fromtimestamp(user.token_expires_at, UTC)
            if user and user.token_expires_at
            else None
        ),
        workspaces=None if decision.any_workspace else frozenset(decision.workspaces),
        sessions_valid_after=(
            decision.sessions_valid_after.ToDatetime(tzinfo=UTC)
            if decision.HasField("sessions_valid_after")
            else None
        ),
    )
