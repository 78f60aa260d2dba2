"""The broker's ConnectionService: translate, call one use case, translate back."""

from __future__ import annotations

from google.protobuf import empty_pb2
from grpc.aio import ServicerContext as Context
from nexus.broker.v1 import connections_pb2 as pb
from nexus.broker.v1 import connections_pb2_grpc
from nexus_common import CaptureAttemptsExhausted, current_caller, principal_of

from ..adapters.policy_client import PolicyClient
from ..domain.connections import ConnectionStatus
from ..service_layer import connections
from ..service_layer.connections import AuthorizationResponse, ConnectionDeps
from ..service_layer.tokens import Refresher, get_token, refresh_connection
from .convert import connection_to_proto, timestamp, token_payload_to_proto

__all__ = ["ConnectionServicer"]


class ConnectionServicer(connections_pb2_grpc.ConnectionServiceServicer):
    def __init__(self, deps: ConnectionDeps, refresher: Refresher, policy: PolicyClient) -> None:
        self._deps = deps
        self._refresher = refresher
        self._policy = policy

    async def RequestConnection(
        self, request: pb.RequestConnectionRequest, context: Context
    ) -> pb.RequestConnectionResponse:
        started = await connections.request_connection(
            workspace_id=request.workspace_id,
            tenant_id=request.tenant_id,
            provider_id=request.provider_id,
            provider_name=request.provider_name,
            scopes=tuple(request.scopes),
            return_url=request.return_url,
            deps=self._deps,
            require_confirmation=(
                request.require_confirmation if request.HasField("require_confirmation") else None
            ),
        )
        return pb.RequestConnectionResponse(
            auth_url=started.auth_url,
            state=started.state,
            connection_id=started.connection.id,
            scopes=started.connection.scopes,
            provider_id=started.provider.id,
            expire_time=timestamp(started.connection.pending_until),
            confirmation_required=started.confirmation_required,
        )

    async def BeginAuthorization(
        self, request: pb.BeginAuthorizationRequest, context: Context
    ) -> pb.BeginAuthorizationResponse:
        url, expires_at = await connections.begin_authorization(
            request.state, request.binding, self._deps
        )
        return pb.BeginAuthorizationResponse(redirect_url=url, expire_time=timestamp(expires_at))

    async def CompleteAuthorization(
        self, request: pb.CompleteAuthorizationRequest, context: Context
    ) -> pb.CompleteAuthorizationResponse:
        response = AuthorizationResponse(
            state=request.state,
            code=request.code,
            error=request.error,
            callback_provider=request.provider,
            iss=request.iss if request.HasField("iss") else None,
            binding=request.binding,
        )
        url = await connections.complete_authorization(response, self._deps)
        return pb.CompleteAuthorizationResponse(redirect_url=url)

    async def GetCaptureForm(
        self, request: pb.GetCaptureFormRequest, context: Context
    ) -> pb.CaptureForm:
        form = await connections.capture_form(request.state, request.binding, self._deps)
        return pb.CaptureForm(
            provider_name=form.provider.name,
            provider_description=form.provider.spec.description,
            fields=[
                pb.CaptureField(name=f.name, label=f.label, required=f.required, secret=f.secret)
                for f in form.fields
            ],
            return_origin=form.return_origin,
        )

    async def CaptureCredentials(
        self, request: pb.CaptureCredentialsRequest, context: Context
    ) -> pb.CaptureCredentialsResponse:
        """The backend that asked for the connection completes it: no browser."""
        connection, url = await connections.capture_credentials(
            request.state, dict(request.credentials), self._deps
        )
        if connection.status == ConnectionStatus.FAILED:
            raise CaptureAttemptsExhausted(
                "these credentials were rejected, and that was the last try this state "
                "allows; start the connection again"
            )
        return pb.CaptureCredentialsResponse(
            connection_id=connection.id, status=connection.status, redirect_url=url
        )

    async def SubmitCaptureForm(
        self, request: pb.SubmitCaptureFormRequest, context: Context
    ) -> pb.CaptureCredentialsResponse:
        """The hosted page, in the browser bound to the state. A failed outcome
        still answers, so the browser can take it back to the app."""
        connection, url = await connections.capture_credentials(
            request.state, dict(request.credentials), self._deps, binding=request.binding
        )
        return pb.CaptureCredentialsResponse(
            connection_id=connection.id, status=connection.status, redirect_url=url
        )

    async def CheckConnection(
        self, request: pb.CheckConnectionRequest, context: Context
    ) -> pb.Connection:
        return connection_to_proto(
            *await connections.check_connection(request.connection_id, self._deps)
        )

    async def GetToken(self, request: pb.GetTokenRequest, context: Context) -> pb.TokenPayload:
        payload = await get_token(
            request.connection_id,
            principal_of(current_caller.get()),
            self._deps,
            self._refresher,
            self._policy,
        )
        return token_payload_to_proto(payload)

    async def RefreshConnection(
        self, request: pb.RefreshConnectionRequest, context: Context
    ) -> pb.Connection:
        refreshed = await refresh_connection(
            request.connection_id,
            principal_of(current_caller.get()),
            self._deps,
            self._refresher,
            self._policy,
        )
        return connection_to_proto(*refreshed)

    async def ListConnections(
        self, request: pb.ListConnectionsRequest, context: Context
    ) -> pb.ListConnectionsResponse:
        page = await connections.list_connections(
            request.workspace_id, request.page_size, request.page_token, self._deps
        )
        return pb.ListConnectionsResponse(
            connections=[connection_to_proto(c, p) for c, p in page.connections],
            next_page_token=page.next_page_token,
        )

    async def RevokeConnection(
        self, request: pb.RevokeConnectionRequest, context: Context
    ) -> pb.Connection:
        return connection_to_proto(
            *await connections.revoke_connection(request.connection_id, self._deps)
        )

    async def ConfirmConnection(
        self, request: pb.ConfirmConnectionRequest, context: Context
    ) -> pb.Connection:
        return connection_to_proto(
            *await connections.confirm_connection(
                request.connection_id, request.confirmation, self._deps
            )
        )

    async def DeleteConnection(
        self, request: pb.DeleteConnectionRequest, context: Context
    ) -> empty_pb2.Empty:
        await connections.delete_connection(request.connection_id, self._deps)
        return empty_pb2.Empty()
