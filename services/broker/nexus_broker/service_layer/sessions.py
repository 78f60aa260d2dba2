"""Issuing, closing and introspecting agent and on-behalf-of sessions.

Order of checks for a new session: the request's shape; that an agent asks
only as itself; the provider; the policy service's gates (the agent's
allowed scopes, then the user's permissions); the connection and the scopes
it was granted. Only then is a credential fetched and a session stored.
Every grant and every denial is audited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from nexus_common import (
    AgentMismatch,
    AuditEvent,
    ConnectionAmbiguous,
    ConnectionNotFound,
    NexusError,
    NoConnection,
    ProviderDeleted,
    ProviderUnavailable,
    ScopeNotGranted,
    ScopeNotOffered,
    SessionNotFound,
    SessionNotSupported,
    ValidationFailed,
    current_caller,
)

from ..adapters.policy_client import PolicyClient, PolicyDecision
from ..adapters.rfc6749 import ClientCredentials, TokenEndpointError
from ..adapters.rfc7009 import revoke_tokens
from ..domain.connections import Connection, TokenSet
from ..domain.providers import AuthType, Provider
from ..domain.sessions import (
    Session,
    SessionKind,
    SessionLimits,
    is_uuid,
    session_claims,
    validate_request,
)
from ..metrics import SESSIONS
from .connections import ConnectionDeps, client_credentials, load_connection
from .providers import get_provider
from .signing import SessionSigner
from .tokens import Refresher, get_token, require_active
from .unit_of_work import BrokerUnitOfWork

log = logging.getLogger("nexus.sessions")

__all__ = [
    "IssuedSession",
    "SessionDeps",
    "SessionRequest",
    "close_session",
    "create_session",
    "introspect_session",
    "purge_sessions",
]


@dataclass(frozen=True)
class SessionDeps:
    connections: ConnectionDeps
    refresher: Refresher
    policy: PolicyClient
    signer: SessionSigner
    limits: SessionLimits
    issuer: str


@dataclass(frozen=True)
class SessionRequest:
    agent_id: str
    provider: str
    scopes: list[str]
    ttl_seconds: int | None = None
    connection_id: str = ""
    workspace_id: str = ""
    # None for an agent session; the user's token for an on-behalf-of session.
    user_context_token: str | None = None


@dataclass(frozen=True)
class IssuedSession:
    session: Session
    access_token: str
    session_token: str


def _require_self(agent_id: str) -> None:
    caller = current_caller.get()
    if caller is not None and caller.kind == "agent" and caller.name != agent_id:
        raise AgentMismatch(
            f"the agent {caller.name!r} may request sessions only as itself, not as {agent_id!r}",
            agent_id=agent_id,
        )


def _may_see(session: Session) -> bool:
    caller = current_caller.get()
    return caller is None or caller.kind != "agent" or caller.name == session.agent_id


async def _session_provider(name: str, deps: SessionDeps) -> Provider:
    provider = await get_provider(name, deps.connections.registry)
    if provider.deleted_at is not None:
        raise ProviderDeleted(f"{provider.name} was deleted", provider_id=provider.id)
    if provider.spec.auth_type not in (AuthType.OAUTH2, AuthType.NEXUS):
        raise SessionNotSupported(
            f"{provider.name} uses static credentials ({provider.spec.auth_type}), which "
            "cannot be scoped to a session; fetch them with GetToken",
            provider=provider.name,
        )
    return provider


async def _resolve_connection(
    request: SessionRequest, provider: Provider, deps: SessionDeps
) -> Connection:
    """The named connection, else the only one that matches; never a guess."""
    async with deps.connections.uow() as uow:
        if request.connection_id:
            connection = await load_connection(uow, request.connection_id)
            if connection.provider_id != provider.id or (
                request.workspace_id and connection.workspace_id != request.workspace_id
            ):
                raise ConnectionNotFound(
                    f"connection {request.connection_id} is not a connection to "
                    f"{provider.name}"
                    + (f" in workspace {request.workspace_id!r}" if request.workspace_id else ""),
                    connection_id=request.connection_id,
                )
            return connection
        matches = await uow.connections.usable_for(provider.id, request.workspace_id, limit=2)
    where = f" in workspace {request.workspace_id!r}" if request.workspace_id else ""
    if not matches:
        raise NoConnection(
            f"there is no active connection to {provider.name}{where}; connect one first",
            provider=provider.name,
        )
    if len(matches) > 1:
        raise ConnectionAmbiguous(
            f"several connections to {provider.name}{where} match; name one with "
            "connection_id or workspace_id",
            provider=provider.name,
        )
    return matches[0]


@dataclass(frozen=True)
class _Credential:
    """The provider token a session hands out, and whether it is its own."""

    connection: Connection
    access_token: str
    expires_at: datetime | None
    narrowed: bool = False


async def _provider_credential(
    request: SessionRequest, provider: Provider, scopes: tuple[str, ...], deps: SessionDeps
) -> _Credential:
    connection = await _resolve_connection(request, provider, deps)
    async with deps.connections.uow() as uow:
        tokens = await uow.connections.tokens(connection.id)
    # RFC 6749 §5.1: a token response without "scope" granted what was asked.
    granted = set((tokens.scope if tokens is not None else ()) or connection.scopes)
    missing = [scope for scope in scopes if scope not in granted]
    if missing:
        raise ScopeNotGranted(
            f"the connection to {provider.name} was not granted {', '.join(missing)}; "
            "the user must reconnect with those scopes",
            connection_id=connection.id,
            missing_scopes=", ".join(missing),
        )
    if provider.params.supports_scope_narrowing and set(scopes) < granted:
        require_active(connection, provider, deps.connections.now())
        narrowed = await deps.refresher.narrowed(connection.id, scopes)
        return _Credential(connection, narrowed.access_token, narrowed.expires_at, narrowed=True)
    _, credentials, expires_at = await get_token(connection.id, deps.connections, deps.refresher)
    return _Credential(connection, str(credentials["access_token"]), expires_at)


def _check_offered(provider: Provider, scopes: tuple[str, ...]) -> None:
    not_offered = [scope for scope in scopes if scope not in provider.spec.scopes]
    if not_offered:
        raise ScopeNotOffered(
            f"{provider.name} does not offer {', '.join(not_offered)}",
            field="scopes",
        )


async def _audit_denial(
    deps: SessionDeps, request: SessionRequest, kind: str, error: NexusError
) -> None:
    metadata = dict(error.metadata)
    event = AuditEvent.record(
        "session.denied",
        f"agents/{request.agent_id}",
        deps.connections.now(),
        kind=kind,
        agent_id=request.agent_id,
        provider=request.provider,
        scopes=sorted(set(request.scopes)),
        acting_for=metadata.get("user_id", ""),
        tenant_id=metadata.get("tenant_id", ""),
        outcome="denied",
        reason=error.reason,
    )
    try:
        async with deps.connections.uow() as uow:
            await uow.audit.add(event)
            await uow.commit()
    except Exception:
        # The caller must still learn why they were refused.
        log.exception("could not record the denial of a session for %s", request.agent_id)


async def create_session(request: SessionRequest, deps: SessionDeps) -> IssuedSession:
    validate_request(
        request.agent_id,
        request.provider,
        request.scopes,
        request.connection_id,
        request.workspace_id,
    )
    if request.user_context_token is not None and not request.user_context_token.strip():
        raise ValidationFailed("user_context_token is required", field="user_context_token")
    ttl = deps.limits.ttl(request.ttl_seconds)
    kind = SessionKind.AGENT if request.user_context_token is None else SessionKind.OBO
    try:
        _require_self(request.agent_id)
        issued = await _issue(request, kind, ttl, deps)
    except NexusError as error:
        SESSIONS.labels(kind, "denied", error.reason).inc()
        await _audit_denial(deps, request, kind, error)
        raise
    SESSIONS.labels(kind, "granted", "").inc()
    return issued


async def _issue(
    request: SessionRequest, kind: str, ttl: timedelta, deps: SessionDeps
) -> IssuedSession:
    provider = await _session_provider(request.provider, deps)
    decision: PolicyDecision = await deps.policy.evaluate(
        request.agent_id, request.scopes, request.user_context_token
    )
    credential: _Credential | None = None
    if provider.spec.auth_type == AuthType.NEXUS:
        _check_offered(provider, decision.scopes)
    else:
        credential = await _provider_credential(request, provider, decision.scopes, deps)
    now = deps.connections.now().replace(microsecond=0)
    expires_at = now + ttl
    if credential is not None and credential.expires_at is not None:
        expires_at = min(expires_at, credential.expires_at.replace(microsecond=0))
    if expires_at <= now:
        raise ProviderUnavailable(f"the credential for {provider.name} has expired; try again")
    session = Session(
        kind=kind,
        agent_id=request.agent_id,
        provider_id=provider.id,
        provider_name=provider.name,
        connection_id=credential.connection.id if credential is not None else None,
        scopes=decision.scopes,
        created_at=now,
        expires_at=expires_at,
        user=decision.user,
    )
    key = await deps.signer.current(now)
    session_token = key.sign(session_claims(session, deps.issuer))
    user = session.user
    async with deps.connections.uow() as uow:
        await uow.sessions.add(
            session, credential.access_token if credential and credential.narrowed else None
        )
        await uow.audit.add(
            AuditEvent.record(
                "session.granted",
                f"sessions/{session.id}",
                now,
                kind=kind,
                agent_id=session.agent_id,
                provider=provider.name,
                connection_id=session.connection_id or "",
                scopes=list(session.scopes),
                acting_for=user.user_id if user else "",
                tenant_id=user.tenant_id if user else "",
                outcome="granted",
                expires_at=int(expires_at.timestamp()),
            )
        )
        await uow.commit()
    access_token = credential.access_token if credential is not None else session_token
    return IssuedSession(session, access_token, session_token)


@dataclass(frozen=True)
class _Revocation:
    """A token narrowed for a closed session, to revoke at its provider."""

    provider: Provider
    client: ClientCredentials
    token: str


async def close_session(session_id: str, deps: SessionDeps) -> None:
    """Close a session; closing a closed one changes nothing. A provider token
    narrowed for the session alone is revoked at the provider (RFC 7009) when
    it can be; a token shared with the connection lapses at its expiry."""
    if not session_id:
        raise ValidationFailed("session_id is required", field="session_id")
    if not is_uuid(session_id):
        raise SessionNotFound("no session has that session_id")
    now = deps.connections.now()
    async with deps.connections.uow() as uow:
        session = await uow.sessions.get(session_id)
        # Another agent's session reads as absent: its existence is not theirs to learn.
        if session is None or not _may_see(session):
            raise SessionNotFound(f"no session {session_id}", session_id=session_id)
        revocation = await _revocation(uow, session)
        if not await uow.sessions.close(session_id, now):
            return
        await uow.audit.add(
            AuditEvent.record(
                "session.closed",
                f"sessions/{session_id}",
                now,
                agent_id=session.agent_id,
                provider=session.provider_name,
                revoke_at_provider=revocation is not None,
            )
        )
        await uow.commit()
    if revocation is not None:
        await _revoke(revocation, deps, now)


async def _revocation(uow: BrokerUnitOfWork, session: Session) -> _Revocation | None:
    token = await uow.sessions.narrowed_token(session.id)
    provider = await uow.providers.get(session.provider_id) if token else None
    if token is None or provider is None or not provider.revocation_url:
        return None
    return _Revocation(provider, await client_credentials(uow, provider), token)


async def _revoke(revocation: _Revocation, deps: SessionDeps, now: datetime) -> None:
    provider = revocation.provider
    try:
        await revoke_tokens(
            deps.connections.tokens,
            provider.revocation_url,
            revocation.client,
            TokenSet(access_token=revocation.token),
            now,
        )
    except TokenEndpointError as exc:
        # The session is closed either way; the token lapses at its expiry.
        log.warning("%s did not confirm revoking a session's token: %s", provider.name, exc.message)


async def introspect_session(token: str, deps: SessionDeps) -> dict[str, Any] | None:
    """RFC 7662: the claims of an active session token, else None."""
    if not token:
        raise ValidationFailed("token is required", field="token")
    now = deps.connections.now()
    claims = await deps.signer.verify(token, deps.issuer, now)
    if claims is None:
        return None
    async with deps.connections.uow() as uow:
        session = await uow.sessions.get(str(claims["jti"]))
    if session is None or not session.active_at(now):
        return None
    return claims


async def purge_sessions(deps: SessionDeps, retention: timedelta) -> int:
    """Forget sessions that ended more than ``retention`` ago; the audit trail
    keeps their history, and their tokens can no longer verify."""
    async with deps.connections.uow() as uow:
        purged = await uow.sessions.purge(deps.connections.now() - retention)
        await uow.commit()
    return purged
