"""The broker's SessionService: translate, call one use case, translate back."""

from __future__ import annotations

import json
from typing import Any

from google.api import httpbody_pb2
from google.protobuf import empty_pb2
from grpc.aio import ServicerContext as Context
from nexus.broker.v1 import sessions_pb2 as pb
from nexus.broker.v1 import sessions_pb2_grpc
from nexus_common import current_caller, introspector_of, principal_of

from ..service_layer import sessions
from ..service_layer.sessions import IssuedSession, SessionDeps, SessionRequest

__all__ = ["SessionServicer"]

# Claims copied into an introspection answer, by name (RFC 7662 §2.2).
_TEXT_CLAIMS = (
    "scope",
    "client_id",
    "sub",
    "iss",
    "aud",
    "jti",
    "acting_for",
    "tenant_id",
    "clearance_level",
    "connection_id",
)


def _session_to_proto(issued: IssuedSession) -> pb.AgentSession:
    session = issued.session
    user = session.user
    return pb.AgentSession(
        session_id=session.id,
        access_token=issued.access_token,
        token_type="Bearer",  # noqa: S106 - a scheme name
        expires_at=int(session.expires_at.timestamp()),
        scopes=session.scopes,
        provider=session.provider_name,
        connection_id=session.connection_id or "",
        session_token=issued.session_token,
        agent_id=session.agent_id,
        acting_for=user.user_id if user else "",
        tenant_id=user.tenant_id if user else "",
        clearance_level=user.clearance_level if user else "",
        token_scopes=issued.token_scopes,
    )


def _request(
    message: pb.CreateAgentSessionRequest | pb.CreateOboSessionRequest, token: str | None
) -> SessionRequest:
    return SessionRequest(
        agent_id=message.agent_id,
        provider=message.provider,
        scopes=list(message.scopes),
        ttl_seconds=message.ttl_seconds if message.HasField("ttl_seconds") else None,
        connection_id=message.connection_id,
        workspace_id=message.workspace_id,
        user_context_token=token,
        owner_context_token=(
            message.owner_context_token
            if isinstance(message, pb.CreateAgentSessionRequest)
            and message.HasField("owner_context_token")
            else None
        ),
    )


def _introspection(claims: dict[str, Any] | None) -> pb.IntrospectSessionResponse:
    if claims is None:
        return pb.IntrospectSessionResponse(active=False)
    answer = pb.IntrospectSessionResponse(
        active=True,
        exp=int(claims["exp"]),
        iat=int(claims["iat"]),
        token_type="Bearer",  # noqa: S106
    )
    for name in _TEXT_CLAIMS:
        if name in claims:
            setattr(answer, name, str(claims[name]))
    return answer


class SessionServicer(sessions_pb2_grpc.SessionServiceServicer):
    def __init__(self, deps: SessionDeps) -> None:
        self._deps = deps

    async def CreateAgentSession(
        self, request: pb.CreateAgentSessionRequest, context: Context
    ) -> pb.AgentSession:
        issued = await sessions.create_session(
            _request(request, None), principal_of(current_caller.get()), self._deps
        )
        return _session_to_proto(issued)

    async def CreateOboSession(
        self, request: pb.CreateOboSessionRequest, context: Context
    ) -> pb.AgentSession:
        issued = await sessions.create_session(
            _request(request, request.user_context_token),
            principal_of(current_caller.get()),
            self._deps,
        )
        return _session_to_proto(issued)

    async def CloseAgentSession(
        self, request: pb.CloseAgentSessionRequest, context: Context
    ) -> empty_pb2.Empty:
        await sessions.close_session(
            request.session_id, principal_of(current_caller.get()), self._deps
        )
        return empty_pb2.Empty()

    async def IntrospectSession(
        self, request: pb.IntrospectSessionRequest, context: Context
    ) -> pb.IntrospectSessionResponse:
        claims = await sessions.introspect_session(
            request.token, introspector_of(current_caller.get()), self._deps
        )
        return _introspection(claims)

    async def GetJwks(self, request: pb.GetJwksRequest, context: Context) -> httpbody_pb2.HttpBody:
        now = self._deps.connections.now()
        jwks = await self._deps.signer.jwks(now)
        await context.send_initial_metadata(
            (("cache-control", f"public, max-age={jwks.max_age_seconds(now)}"),)
        )
        return httpbody_pb2.HttpBody(
            content_type="application/jwk-set+json", data=json.dumps(jwks.document).encode()
        )

    async def EndAgentSessions(
        self, request: pb.EndAgentSessionsRequest, context: Context
    ) -> pb.EndAgentSessionsResponse:
        closed, revoked = await sessions.end_agent_sessions(request.agent_id, self._deps)
        return pb.EndAgentSessionsResponse(closed_sessions=closed, revoked_tokens=revoked)
