"""Asking the policy service, the one place that decides who may use a credential.

Its grants for GetToken, refresh and agent sessions are remembered, keyed by
everything the question carries and tagged by the agent it concerns, so a warm
GetToken asks nothing. The policy's change feed drops an agent's grants when
the agent changes (disabled, deleted, rebound, rescoped, sessions ended); while
the feed is down nothing is remembered. Only grants are: a denial is asked
again each time, so its audit record and message stay exact. On-behalf-of
sessions are never remembered: they depend on the user's token and on what
the customer's backend says of it now.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2
from nexus.policy.v1 import policy_pb2, policy_pb2_grpc
from nexus_common import (
    AdminPrincipal,
    InternalClient,
    LoadingCache,
    Principal,
)

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
    # A user's session looks only at connections of this tenant or of none; None: any.
    tenant_id: str | None
    # Credentials minted for the agent before this must not be handed out again.
    sessions_valid_after: datetime | None


def _principal(caller: Principal) -> policy_pb2.Principal:
    if isinstance(caller, AdminPrincipal):
        return policy_pb2.Principal(kind=policy_pb2.Principal.KIND_ADMIN, id=caller.key_name)
    return policy_pb2.Principal(kind=policy_pb2.Principal.KIND_AGENT, id=caller.agent_id)


# What a remembered admin grant is tagged with: no agent's change touches it.
_ADMIN_TAG = ("admin",)


def _agent_tag(agent_id: str) -> tuple[str, str]:
    return ("agent", agent_id)


class PolicyClient:
    def __init__(self, client: InternalClient, *, cache_max_age_seconds: float = 0.0) -> None:
        self._client = client
        self._stub = policy_pb2_grpc.PolicyServiceStub(client.channel)
        # Off until the policy's change feed says it is heard.
        self._grants = LoadingCache[Hashable, AccessGrant](cache_max_age_seconds, enabled=False)

    def changed(self, channel: str, agent_id: str) -> None:
        """The agent changed: its remembered grants no longer hold."""
        self._grants.invalidate(_agent_tag(agent_id))

    def suspend(self) -> None:
        self._grants.suspend()

    def resume(self) -> None:
        self._grants.resume()

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
                    tenant_id=connection.tenant_id,
                )
            )
        if session is not None:
            request.agent_id = session.agent_id
            request.scopes.extend(session.scopes)
            request.workspace_id = session.workspace_id
            if session.user_context_token is not None:
                request.user_context_token = session.user_context_token
        if action == Action.OBO_SESSION or request.HasField("user_context_token"):
            # A user's token is neither remembered nor kept as a key.
            return await self._ask(request)
        agents = {request.agent_id} if request.agent_id else set()
        if not isinstance(caller, AdminPrincipal):
            agents.add(caller.agent_id)
        tags = tuple(_agent_tag(agent_id) for agent_id in sorted(agents)) or (_ADMIN_TAG,)
        return await self._grants.get(
            request.SerializeToString(deterministic=True),
            lambda: self._ask(request),
            tags=tags,
        )

    async def _ask(self, request: policy_pb2.AccessRequest) -> AccessGrant:
        return _grant(await self._client.call(self._stub.AuthorizeAccess, request))

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
        tenant_id=decision.tenant_id if decision.HasField("tenant_id") else None,
        sessions_valid_after=(
            decision.sessions_valid_after.ToDatetime(tzinfo=UTC)
            if decision.HasField("sessions_valid_after")
            else None
        ),
    )
