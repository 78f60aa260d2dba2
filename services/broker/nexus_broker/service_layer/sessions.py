"""Issuing, closing, introspecting and ending agent and on-behalf-of sessions.

Order of checks for a new session: the request's shape; the provider; the
connection the caller named, if any; then the policy service's one decision
(the agent acts as itself, is bound to the provider and the workspace, is
allowed the scopes; on behalf of a user, the user holds them and owns the
workspace), which also says where to look for a connection the caller did not
name. Only then is a credential fetched and a session stored. Every grant and
every denial is audited.

What a session hands out is never broader than it says:

- the connection's grant is exactly what was asked: the connection's token;
- the provider narrows (``supports_scope_narrowing``): a token from a refresh
  grant asking only the session's scopes, shared by the agent's sessions that
  ask the same until it nears expiry (a session ends with it). A narrowing is
  a provider call, so it is limited per connection as forced refreshes are and
  never made while the provider backs off; and its answer's ``scope`` is
  checked: a provider that granted more than asked did not narrow;
- otherwise (and when a narrowing must wait) the session is refused
  (``TOKEN_BROADER_THAN_SESSION``, or ``REFRESH_RATE_LIMITED``), unless
  the provider allows broader tokens (``allow_broader_session_tokens``, whose
  default is ``NEXUS_ENVIRONMENT``'s), and then ``token_scopes`` says what the
  token really carries.

Closing a session never ends the connection's grant: RFC 7009 §2.1 lets a
server revoke a whole grant when one of its tokens is revoked, so a narrowed
token is revoked at the provider only when the provider says that cannot
happen (``revoke_narrowed_tokens``) and no open session still shares it.
Otherwise it lapses at its expiry, and introspection reports the closed
session inactive at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from nexus_common import (
    AdminPrincipal,
    AgentPrincipal,
    AuditEvent,
    ConnectionAmbiguous,
    Introspector,
    NexusError,
    NoConnection,
    Principal,
    ProviderDeleted,
    ProviderUnavailable,
    RefreshRateLimited,
    ResourceServerPrincipal,
    ScopeNotGranted,
    ScopeNotOffered,
    SessionNotFound,
    SessionNotSupported,
    TokenBroaderThanSession,
    ValidationFailed,
)

from ..adapters.group_commit import GroupCommit
from ..adapters.policy_client import AccessGrant, PolicyClient, SessionAsk
from ..adapters.rfc6749 import ClientCredentials, TokenEndpointError
from ..adapters.rfc7009 import revoke_tokens
from ..domain.access import Action
from ..domain.connections import Connection, TokenSet
from ..domain.providers import AuthType, Provider
from ..domain.sessions import (
    NarrowedToken,
    Session,
    SessionKind,
    SessionLimits,
    is_uuid,
    scopes_beyond,
    session_claims,
    validate_request,
)
from ..metrics import SESSIONS
from .access import audit_denial, seen_by
from .connections import ConnectionDeps, client_credentials, connection_not_found, load_connection
from .releases import named_provider
from .signing import SessionSigner
from .tokens import Refresher, release_token, require_active
from .unit_of_work import BrokerUnitOfWork

log = logging.getLogger("nexus.sessions")

# As the policy service's agent ids, and the agent_sessions column.
_MAX_AGENT_ID = 63

__all__ = [
    "IssuedSession",
    "SessionDeps",
    "SessionRequest",
    "close_session",
    "create_session",
    "end_agent_sessions",
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
    # For providers that say nothing (NEXUS_ENVIRONMENT=development: allowed).
    broader_tokens_by_default: bool
    # New sessions and their audit rows, written by group commit.
    grants: GroupCommit[tuple[Session, AuditEvent]]


@dataclass(frozen=True)
class SessionRequest:
    agent_id: str
    provider: str
    scopes: list[str]
    ttl_seconds: int | None = None
    connection_id: str = ""
    workspace_id: str = ""
    # None for an agent session; the user's token for an on-behalf-of session.
    user_context_token: str | None = field(default=None, repr=False)
    # An agent session serving a signed-in user: that user's token. The
    # connection must be the user's; the session acts as the agent.
    owner_context_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class IssuedSession:
    session: Session
    access_token: str = field(repr=False)
    session_token: str = field(repr=False)
    # What access_token really carries.
    token_scopes: tuple[str, ...]


def _may_see(caller: Introspector, session: Session) -> bool:
    """Admins see every session; an agent only its own; a resource server only
    those whose audience (``aud``) is its provider."""
    match caller:
        case AdminPrincipal():
            return True
        case AgentPrincipal(agent_id=agent_id):
            return agent_id == session.agent_id
        case ResourceServerPrincipal(provider=provider):
            return provider == session.provider_name


async def _session_provider(name: str, deps: SessionDeps) -> Provider:
    provider = await named_provider(name, deps.connections)
    if provider.deleted_at is not None:
        raise ProviderDeleted(f"{provider.name} was deleted", provider_id=provider.id)
    if provider.spec.auth_type not in (AuthType.OAUTH2, AuthType.NEXUS):
        raise SessionNotSupported(
            f"{provider.name} uses static credentials ({provider.spec.auth_type}), which "
            "cannot be scoped to a session; fetch them with GetToken",
            provider=provider.name,
        )
    return provider


async def _named_connection(
    request: SessionRequest, provider: Provider, deps: SessionDeps
) -> tuple[Connection, tuple[str, ...]] | None:
    """The connection the caller named, with its granted scopes, if it named one."""
    if not request.connection_id:
        return None
    async with deps.connections.uow() as uow:
        connection = await load_connection(uow, request.connection_id)
        tokens = await uow.connections.tokens(connection.id)
    if connection.provider_id != provider.id or (
        request.workspace_id and connection.workspace_id != request.workspace_id
    ):
        # Read as absent: what another provider's or workspace's connection is
        # is not the caller's to learn.
        raise connection_not_found(request.connection_id)
    return connection, connection.granted_scopes(tokens)


async def _find_connection(
    request: SessionRequest, provider: Provider, grant: AccessGrant, deps: SessionDeps
) -> Connection:
    """The only usable connection where the decision allows looking; never a guess."""
    reach = frozenset({request.workspace_id}) if request.workspace_id else grant.workspaces
    async with deps.connections.uow() as uow:
        matches = await uow.connections.usable_for(provider.id, reach, grant.tenant_id, limit=2)
    where = f" in workspace {request.workspace_id!r}" if request.workspace_id else ""
    if not matches:
        raise NoConnection(
            f"there is no active connection to {provider.name}{where} that this session "
            "may use; connect one first",
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
    """The provider token a session hands out, and what it carries."""

    connection: Connection
    access_token: str = field(repr=False)
    expires_at: datetime | None
    token_scopes: tuple[str, ...]
    narrowed_token_id: str | None = None


async def _narrowed(
    connection: Connection,
    agent_id: str,
    scopes: tuple[str, ...],
    lifetime: timedelta,
    grant: AccessGrant,
    deps: SessionDeps,
) -> NarrowedToken | None:
    """A token narrowed to ``scopes``: a shared one still good (the session
    ends with it), else a new one from a refresh grant (which the connection
    never stores). None when the provider granted more than was asked."""
    async with deps.connections.uow() as uow:
        cached = await uow.narrowed.find(connection.id, agent_id, scopes)
    now = deps.connections.now()
    skew = timedelta(seconds=deps.connections.refresh.expiry_skew_seconds)
    if cached is not None and cached.usable_for(lifetime, now, grant.sessions_valid_after, skew):
        return cached
    fresh = await deps.refresher.narrowed(connection.id, scopes)
    beyond = scopes_beyond(scopes, fresh.scope)
    if beyond:
        log.warning(
            "connection %s: the provider ignored a narrower scope and granted %s too",
            connection.id,
            " ".join(beyond),
        )
        return None
    token = NarrowedToken(connection.id, agent_id, fresh.access_token, now, fresh.expires_at)
    async with deps.connections.uow() as uow:
        await uow.narrowed.add(token, scopes)
        await uow.commit()
    return token


async def _provider_credential(
    request: SessionRequest,
    provider: Provider,
    connection: Connection,
    granted: tuple[str, ...],
    grant: AccessGrant,
    lifetime: timedelta,
    deps: SessionDeps,
) -> _Credential:
    scopes = grant.scopes
    missing = [scope for scope in scopes if scope not in granted]
    if missing:
        raise ScopeNotGranted(
            f"the connection to {provider.name} was not granted {', '.join(missing)}; "
            "the user must reconnect with those scopes",
            connection_id=connection.id,
            missing_scopes=", ".join(missing),
        )
    narrower = set(scopes) < set(granted)
    if narrower and provider.params.supports_scope_narrowing:
        require_active(connection, provider, deps.connections.now())
        try:
            token = await _narrowed(connection, request.agent_id, scopes, lifetime, grant, deps)
        except RefreshRateLimited:
            # Asked moments ago for other scopes: a broader token, said so, may do.
            if not _broader_allowed(provider, deps):
                raise
            token = None
        if token is not None:
            return _Credential(connection, token.access_token, token.expires_at, scopes, token.id)
        # Not narrowed after all: the rule for providers that cannot narrow applies.
    if narrower and not _broader_allowed(provider, deps):
        cannot = (
            "granted more than the narrower scopes asked"
            if provider.params.supports_scope_narrowing
            else "cannot narrow its tokens"
        )
        raise TokenBroaderThanSession(
            f"{provider.name} {cannot}, and the connection's token carries "
            f"{' '.join(sorted(granted))}, more than the {' '.join(scopes)} asked for. Ask for "
            "all of the connection's scopes, or an admin sets the provider's params: "
            '"supports_scope_narrowing": true if it can issue narrower tokens on refresh, '
            'else "allow_broader_session_tokens": true to accept broader ones '
            f"(PATCH /v1/providers/{provider.id})",
            provider=provider.name,
            token_scopes=" ".join(sorted(granted)),
        )
    _, credentials, expires_at = await release_token(
        connection.id, deps.connections, deps.refresher
    )
    token_scopes = tuple(sorted(granted)) if narrower else scopes
    return _Credential(connection, str(credentials["access_token"]), expires_at, token_scopes)


def _broader_allowed(provider: Provider, deps: SessionDeps) -> bool:
    chosen = provider.params.allow_broader_session_tokens
    return deps.broader_tokens_by_default if chosen is None else chosen


def _check_offered(provider: Provider, scopes: tuple[str, ...]) -> None:
    not_offered = [scope for scope in scopes if scope not in provider.spec.scopes]
    if not_offered:
        raise ScopeNotOffered(
            f"{provider.name} does not offer {', '.join(not_offered)}",
            field="scopes",
        )


async def create_session(
    request: SessionRequest, caller: Principal, deps: SessionDeps
) -> IssuedSession:
    validate_request(
        request.agent_id,
        request.provider,
        request.scopes,
        request.connection_id,
        request.workspace_id,
    )
    if request.user_context_token is not None and not request.user_context_token.strip():
        raise ValidationFailed("user_context_token is required", field="user_context_token")
    if request.owner_context_token is not None and not request.owner_context_token.strip():
        raise ValidationFailed(
            "owner_context_token, when given, must be the user's token", field="owner_context_token"
        )
    ttl = deps.limits.ttl(request.ttl_seconds)
    kind = SessionKind.AGENT if request.user_context_token is None else SessionKind.OBO
    try:
        issued = await _issue(request, caller, kind, ttl, deps)
    except NexusError as error:
        SESSIONS.labels(kind, "denied", error.reason).inc()
        metadata = dict(error.metadata)
        await audit_denial(
            deps.connections,
            "session.denied",
            f"agents/{request.agent_id}",
            error,
            kind=kind,
            agent_id=request.agent_id,
            provider=request.provider,
            scopes=sorted(set(request.scopes)),
            acting_for=metadata.get("user_id", ""),
            tenant_id=metadata.get("tenant_id", ""),
            workspace_id=metadata.get("workspace_id", request.workspace_id),
        )
        hidden = seen_by(caller, error, request.connection_id) if request.connection_id else error
        if hidden is error:
            raise
        raise hidden from None
    SESSIONS.labels(kind, "granted", "").inc()
    return issued


async def _issue(
    request: SessionRequest, caller: Principal, kind: str, ttl: timedelta, deps: SessionDeps
) -> IssuedSession:
    provider = await _session_provider(request.provider, deps)
    named = await _named_connection(request, provider, deps)
    grant = await deps.policy.authorize(
        caller,
        Action.AGENT_SESSION if kind == SessionKind.AGENT else Action.OBO_SESSION,
        provider,
        named[0] if named else None,
        named[1] if named else (),
        SessionAsk(
            request.agent_id,
            request.scopes,
            request.user_context_token if kind == SessionKind.OBO else request.owner_context_token,
            request.workspace_id,
        ),
    )
    # An agent session serving a user is the agent's own, confined to the user's
    # connections: it does not act for them, so it is not stamped with them.
    acting_for = grant.user if kind == SessionKind.OBO else None
    owner = grant.user.user_id if grant.user is not None and acting_for is None else ""
    credential: _Credential | None = None
    if provider.spec.auth_type == AuthType.NEXUS:
        _check_offered(provider, grant.scopes)
    else:
        if named is None:
            connection = await _find_connection(request, provider, grant, deps)
            async with deps.connections.uow() as uow:
                granted = connection.granted_scopes(await uow.connections.tokens(connection.id))
        else:
            connection, granted = named
        credential = await _provider_credential(
            request, provider, connection, granted, grant, ttl, deps
        )
    now = deps.connections.now()
    limits = [now + ttl, grant.user_expires_at, credential.expires_at if credential else None]
    expires_at = min(limit for limit in limits if limit is not None).replace(microsecond=0)
    if expires_at <= now:
        raise ProviderUnavailable(f"the credential for {provider.name} has expired; try again")
    session = Session(
        kind=kind,
        agent_id=request.agent_id,
        provider_id=provider.id,
        provider_name=provider.name,
        connection_id=credential.connection.id if credential is not None else None,
        scopes=grant.scopes,
        created_at=now,
        expires_at=expires_at,
        user=acting_for,
        narrowed_token_id=credential.narrowed_token_id if credential else None,
    )
    key = await deps.signer.current(now)
    session_token = key.sign(session_claims(session, deps.issuer))
    user = session.user
    recorded = AuditEvent.record(
        "session.granted",
        f"sessions/{session.id}",
        now,
        kind=kind,
        agent_id=session.agent_id,
        provider=provider.name,
        connection_id=session.connection_id or "",
        scopes=list(session.scopes),
        token_scopes=list(credential.token_scopes if credential else session.scopes),
        acting_for=user.user_id if user else "",
        tenant_id=grant.user.tenant_id if grant.user else "",
        owner=owner,
        outcome="granted",
        expires_at=int(expires_at.timestamp()),
    )
    # Durable, with its audit row, before the token goes out.
    await deps.grants.record((session, recorded))
    if credential is None:
        return IssuedSession(session, session_token, session_token, session.scopes)
    return IssuedSession(session, credential.access_token, session_token, credential.token_scopes)


async def close_session(session_id: str, caller: Principal, deps: SessionDeps) -> None:
    """Close a session; closing a closed one changes nothing. The connection's
    grant is never touched: see the module's docstring for when a narrowed
    token is revoked at its provider."""
    if not session_id:
        raise ValidationFailed("session_id is required", field="session_id")
    if not is_uuid(session_id):
        raise SessionNotFound("no session has that session_id")
    now = deps.connections.now()
    async with deps.connections.uow() as uow:
        session = await uow.sessions.get(session_id)
        # Another agent's session reads as absent: its existence is not theirs to learn.
        if session is None or not _may_see(caller, session):
            raise SessionNotFound(f"no session {session_id}", session_id=session_id)
        if not await uow.sessions.close(session_id, now):
            return
        revocations = await _forget_unshared(uow, session, now)
        await uow.audit.add(
            AuditEvent.record(
                "session.closed",
                f"sessions/{session_id}",
                now,
                agent_id=session.agent_id,
                provider=session.provider_name,
                revoke_at_provider=bool(revocations),
            )
        )
        await uow.commit()
    await _revoke_all(revocations, deps, now)


async def end_agent_sessions(agent_id: str, deps: SessionDeps) -> tuple[int, int]:
    """The kill switch: close every open session of the agent and forget its
    narrowed tokens, revoking those whose provider allows it. Returns how many
    sessions were closed and tokens revoked."""
    if not agent_id or len(agent_id) > _MAX_AGENT_ID:
        raise ValidationFailed(f"agent_id must be 1-{_MAX_AGENT_ID} characters", field="agent_id")
    now = deps.connections.now()
    async with deps.connections.uow() as uow:
        closed = await uow.sessions.close_for_agent(agent_id, now)
        tokens = await uow.narrowed.for_agent(agent_id)
        await uow.narrowed.remove([token.id for token in tokens])
        revocations = [
            revocation
            for token in tokens
            if (revocation := await _revocation(uow, token, now)) is not None
        ]
        await uow.audit.add(
            AuditEvent.record(
                "sessions.ended",
                f"agents/{agent_id}",
                now,
                closed_sessions=closed,
                revoked_tokens=len(revocations),
            )
        )
        await uow.commit()
    await _revoke_all(revocations, deps, now)
    return closed, len(revocations)


@dataclass(frozen=True)
class _Revocation:
    """A narrowed token to revoke at its provider."""

    provider: Provider
    client: ClientCredentials
    token: str = field(repr=False)


async def _forget_unshared(
    uow: BrokerUnitOfWork, session: Session, now: datetime
) -> list[_Revocation]:
    """After a session closed: its narrowed token, if revocable and no longer shared."""
    if session.narrowed_token_id is None:
        return []
    token = await uow.narrowed.get(session.narrowed_token_id)
    if token is None or await uow.sessions.share_token(token.id, now):
        return []
    revocation = await _revocation(uow, token, now)
    if revocation is None:
        return []
    await uow.narrowed.remove([token.id])
    return [revocation]


async def _revocation(
    uow: BrokerUnitOfWork, token: NarrowedToken, now: datetime
) -> _Revocation | None:
    """Only where revoking cannot end the connection's grant, and while it lives."""
    if token.expires_at is not None and token.expires_at <= now:
        return None
    connection = await uow.connections.get(token.connection_id)
    provider = await uow.providers.get(connection.provider_id) if connection else None
    if provider is None or not provider.revocation_url or provider.endpoints_pending:
        return None
    if not provider.params.revoke_narrowed_tokens:
        return None
    return _Revocation(provider, await client_credentials(uow, provider), token.access_token)


async def _revoke_all(revocations: list[_Revocation], deps: SessionDeps, now: datetime) -> None:
    for revocation in revocations:
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
            # The session is over either way; the token lapses at its expiry.
            log.warning(
                "%s did not confirm revoking a narrowed token: %s", provider.name, exc.message
            )


async def introspect_session(
    token: str, caller: Introspector, deps: SessionDeps
) -> dict[str, Any] | None:
    """RFC 7662: the claims of an active session token, else None. Only admins,
    the session's own agent and its provider's resource server learn anything;
    for anyone else it is inactive, as RFC 7662 §2.2 asks of a token "the
    protected resource is not allowed to introspect", so that the answer tells
    no caller whether another's token exists."""
    if not token:
        raise ValidationFailed("token is required", field="token")
    now = deps.connections.now()
    claims = await deps.signer.verify(token, deps.issuer, now)
    if claims is None:
        return None
    async with deps.connections.uow() as uow:
        session = await uow.sessions.get(str(claims["jti"]))
    if session is None or not session.active_at(now) or not _may_see(caller, session):
        return None
    if not await deps.policy.session_standing(session.agent_id, session.created_at):
        return None
    return claims


async def purge_sessions(deps: SessionDeps, retention: timedelta) -> int:
    """Forget sessions that ended more than ``retention`` ago, and narrowed
    tokens past their expiry; the audit trail keeps their history."""
    now = deps.connections.now()
    async with deps.connections.uow() as uow:
        purged = await uow.sessions.purge(now - retention)
        await uow.narrowed.purge(now, now - retention)
        await uow.commit()
    return purged
