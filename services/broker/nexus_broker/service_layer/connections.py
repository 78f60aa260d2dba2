"""Connection use cases: start, complete (OAuth callback or credential
capture), confirm, inspect, list, revoke, expire and delete."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from nexus_common import (
    AuditEvent,
    BrowserMismatch,
    CallbackProviderMismatch,
    CaptureAttemptsExhausted,
    ConfirmationInvalid,
    ConfirmationRequired,
    ConnectionNotActive,
    ConnectionNotFound,
    CredentialsRejected,
    Internal,
    IssuerMismatch,
    ProviderDeleted,
    ProviderUnavailable,
    ReturnUrlNotAllowed,
    ScopeNotOffered,
    StateInvalid,
    ValidationFailed,
    page_size,
)

from ..adapters.connection_repository import Attempt
from ..adapters.credential_check import CredentialChecker
from ..adapters.group_commit import GroupCommit
from ..adapters.oidc_id_token import IdTokenError, IdTokenVerifier
from ..adapters.rfc6749 import ClientCredentials, TokenEndpoint, TokenEndpointError
from ..adapters.rfc7009 import revoke_tokens
from ..adapters.row_cache import RowCache
from ..domain.connections import Connection, ConnectionStatus, Lease, RefreshPolicy, TokenSet
from ..domain.credentials import capture_fields, validate_static_credentials
from ..domain.params import CredentialField
from ..domain.providers import STATIC_AUTH_TYPES, AuthType, Provider
from ..domain.return_urls import ReturnUrlPolicy, append_query, origin_of
from ..domain.rfc7636 import CODE_CHALLENGE_METHOD, code_challenge, new_code_verifier
from ..domain.state import StateSigner
from .leases import RefreshLeases
from .providers import RegistryDeps, get_provider
from .unit_of_work import BrokerUnitOfWork

__all__ = [
    "CAPTURE_CHECK_LIMIT",
    "AuthorizationResponse",
    "CaptureForm",
    "ConnectionDeps",
    "StartedConnection",
    "begin_authorization",
    "capture_credentials",
    "capture_form",
    "check_connection",
    "client_credentials",
    "complete_authorization",
    "confirm_connection",
    "connection_event",
    "delete_connection",
    "expire_unconfirmed",
    "list_connections",
    "load_connection",
    "provider_of",
    "request_connection",
    "revoke_connection",
]

CALLBACK_PATH = "/v1/callback/"
CONNECT_PATH = "/v1/connect/"
CAPTURE_PATH = "/v1/capture/"
# Live credential checks per capture state; after the last one fails the state
# is spent, so the page cannot serve as an oracle for guessing credentials.
CAPTURE_CHECK_LIMIT = 5
# The gateway's binding cookie value, and a confirmation code: token_urlsafe(32).
_BINDING = re.compile(r"[A-Za-z0-9_-]{43}")
_CONFIRMATION = _BINDING


@dataclass(frozen=True)
class ConnectionDeps:
    registry: RegistryDeps
    tokens: TokenEndpoint
    id_tokens: IdTokenVerifier
    checker: CredentialChecker
    signer: StateSigner
    return_urls: ReturnUrlPolicy
    public_base_url: str
    pending_ttl: timedelta
    refresh: RefreshPolicy
    random: Callable[[], float]
    leases: RefreshLeases
    # What releases read, kept right by the unit of work and change notices.
    cache: RowCache
    # Release audit rows, written by group commit.
    audit: GroupCommit[AuditEvent]
    # NEXUS_CONNECTION_CONFIRMATION=required: every connection waits for the
    # app's confirmation, and a request asking not to is refused.
    confirmation_always: bool = False
    # How far apart replicas' clocks may be (NEXUS_CLOCK_SKEW_SECONDS): an unconfirmed
    # connection is expired, its tokens revoked, only this long after confirming stops.
    clock_skew: timedelta = timedelta(seconds=60)

    @property
    def uow(self) -> Callable[[], BrokerUnitOfWork]:
        return self.registry.uow

    def now(self) -> datetime:
        return self.registry.clock()

    def public_url(self, path: str) -> str:
        return self.public_base_url.rstrip("/") + path

    def callback_url(self, provider_name: str) -> str:
        """The redirect URI of one provider: each has its own (RFC 9700 §4.4.2)."""
        return self.public_url(CALLBACK_PATH + provider_name)


@dataclass(frozen=True)
class StartedConnection:
    connection: Connection
    provider: Provider
    auth_url: str
    state: str
    confirmation_required: bool


def connection_event(
    action: str, connection: Connection, now: datetime, **details: Any
) -> AuditEvent:
    return AuditEvent.record(
        action,
        f"connections/{connection.id}",
        now,
        workspace_id=connection.workspace_id,
        provider_id=connection.provider_id,
        **details,
    )


async def _usable_provider(provider_id: str, provider_name: str, deps: ConnectionDeps) -> Provider:
    if bool(provider_id) == bool(provider_name):
        raise ValidationFailed(
            "give exactly one of provider_id and provider_name", field="provider_id"
        )
    # Reading through the registry retries a pending discovery: its first use.
    provider = await get_provider(provider_id or provider_name, deps.registry)
    if provider.deleted_at:
        raise ProviderDeleted(f"provider {provider.name!r} is deleted and cannot start connections")
    # A new connection's code and verifier would go to the moved token endpoint.
    provider.require_endpoints_confirmed()
    if provider.spec.auth_type == AuthType.NEXUS:
        raise ValidationFailed(
            f"{provider.name} is a nexus provider: Nexus issues its tokens, "
            "no connection is needed",
            field="provider_id",
        )
    return provider


def _check_scopes(provider: Provider, requested: tuple[str, ...]) -> tuple[str, ...]:
    if provider.spec.auth_type in STATIC_AUTH_TYPES:
        if requested:
            raise ScopeNotOffered(f"{provider.name} uses static credentials and has no scopes")
        return ()
    if not requested:
        return provider.spec.scopes
    missing = sorted(set(requested) - set(provider.spec.scopes))
    if missing:
        raise ScopeNotOffered(
            f"{provider.name} does not offer the scopes {', '.join(missing)}",
            scopes=" ".join(missing),
        )
    return tuple(dict.fromkeys(requested))


def _authorization_url(
    provider: Provider,
    scopes: tuple[str, ...],
    state: str,
    verifier: str,
    nonce: str | None,
    redirect_uri: str,
) -> str:
    if not provider.auth_url:
        raise ProviderUnavailable(
            f"{provider.name} has no authorization endpoint yet: {provider.discovery.reason}"
        )
    params = provider.params
    query: dict[str, str] = dict(params.auth_params)
    query.update(
        client_id=provider.spec.client_id,
        redirect_uri=redirect_uri,
        response_type="code",
        state=state,
        code_challenge=code_challenge(verifier),
        code_challenge_method=CODE_CHALLENGE_METHOD,
    )
    if scopes and not params.skip_scope_on_auth:
        query["scope"] = " ".join(scopes)
    if nonce is not None:
        query["nonce"] = nonce
    separator = "&" if "?" in provider.auth_url else "?"
    return provider.auth_url + separator + urlencode(query)


async def request_connection(
    *,
    workspace_id: str,
    provider_id: str,
    provider_name: str,
    scopes: tuple[str, ...],
    return_url: str,
    deps: ConnectionDeps,
    require_confirmation: bool | None = None,
    tenant_id: str = "",
) -> StartedConnection:
    if not workspace_id or len(workspace_id) > 255:
        raise ValidationFailed(
            "workspace_id is required (at most 255 characters)", field="workspace_id"
        )
    if not return_url:
        raise ValidationFailed("return_url is required", field="return_url")
    if not deps.return_urls.allows(return_url):
        raise ReturnUrlNotAllowed(
            "return_url is not on this deployment's allowlist (NEXUS_RETURN_URL_ALLOWLIST)",
            field="return_url",
        )
    if require_confirmation is False and deps.confirmation_always:
        raise ConfirmationRequired(
            "this deployment requires every connection to be confirmed by the app"
            " (NEXUS_CONNECTION_CONFIRMATION=required): leave require_confirmation"
            " unset and call ConfirmConnection with the code the browser brings back",
            field="require_confirmation",
        )
    provider = await _usable_provider(provider_id, provider_name, deps)
    granted = _check_scopes(provider, scopes)
    now = deps.now()
    signed = deps.signer.issue(now + deps.pending_ttl)
    static = provider.spec.auth_type in STATIC_AUTH_TYPES
    verifier = None if static else new_code_verifier()
    # OIDC Core §3.1.2.1: a nonce binds the ID token to this authorization.
    nonce = secrets.token_urlsafe(24) if "openid" in granted else None
    confirm = bool(require_confirmation) or deps.confirmation_always
    connection = Connection(
        id=str(uuid.uuid4()),
        workspace_id=workspace_id,
        tenant_id=tenant_id,
        provider_id=provider.id,
        scopes=granted,
        return_url=return_url,
        status=ConnectionStatus.PENDING,
        created_at=now,
        updated_at=now,
        pending_until=signed.expires_at,
    )
    redirect_uri = authorization_url = None
    if not static:
        assert verifier is not None
        redirect_uri = deps.callback_url(provider.name)
        authorization_url = _authorization_url(
            provider, granted, signed.token, verifier, nonce, redirect_uri
        )
    # The browser starts at Nexus, which binds the state to it before it
    # sends it on to the provider or to the capture page.
    auth_url = deps.public_url(CONNECT_PATH + signed.token)
    async with deps.uow() as uow:
        await uow.connections.add(connection)
        await uow.attempts.add(
            Attempt(
                signed.attempt_id,
                connection.id,
                verifier,
                nonce,
                signed.expires_at,
                None,
                redirect_uri=redirect_uri,
                authorization_url=authorization_url,
                confirmation_required=confirm,
            )
        )
        await uow.audit.add(
            connection_event(
                "connection.create",
                connection,
                now,
                scopes=list(granted),
                confirmation_required=confirm,
            )
        )
        await uow.commit()
    return StartedConnection(connection, provider, auth_url, signed.token, confirm)


async def _open_attempt(state: str, deps: ConnectionDeps) -> tuple[Attempt, Connection, Provider]:
    """The attempt a state names, if genuine, unexpired and unused; nothing changes."""
    attempt_id = deps.signer.verify(state, deps.now())
    async with deps.uow() as uow:
        attempt = await uow.attempts.get(attempt_id)
        if attempt is None or attempt.used_at is not None:
            raise StateInvalid(
                "this authorization link was already used; start the connection again"
            )
        connection = await uow.connections.get(attempt.connection_id)
        if connection is None or connection.status_at(deps.now()) != ConnectionStatus.PENDING:
            raise StateInvalid("this connection is no longer waiting for authorization")
        provider = await provider_of(uow, connection)
    return attempt, connection, provider


def _binding_hash(binding: str) -> str:
    return hashlib.sha256(binding.encode()).hexdigest()


_confirmation_hash = _binding_hash


def _check_binding(attempt: Attempt, binding: str) -> None:
    """The browser must be the one that opened auth_url first (RFC 9700 §4.7)."""
    bound = attempt.binding_hash
    if (
        bound is None
        or not _BINDING.fullmatch(binding)
        or not hmac.compare_digest(bound, _binding_hash(binding))
    ):
        raise BrowserMismatch(
            "this authorization was started in another browser; "
            "open the link from the app in the browser you will finish in"
        )


async def begin_authorization(
    state: str, binding: str, deps: ConnectionDeps
) -> tuple[str, datetime]:
    """A browser opened auth_url: bind the state to it, unless another browser
    did first. Returns where it goes next and when the binding ends."""
    if not _BINDING.fullmatch(binding):
        raise ValidationFailed("the browser binding is malformed", field="binding")
    attempt, _, provider = await _open_attempt(state, deps)
    if attempt.binding_hash is None:
        async with deps.uow() as uow:
            if await uow.attempts.bind(attempt.id, _binding_hash(binding)):
                await uow.commit()
                attempt = replace(attempt, binding_hash=_binding_hash(binding))
            else:
                attempt = await uow.attempts.get(attempt.id) or attempt
    _check_binding(attempt, binding)
    if provider.spec.auth_type in STATIC_AUTH_TYPES:
        next_url = deps.public_url(CAPTURE_PATH + state)
    else:
        assert attempt.authorization_url is not None
        next_url = attempt.authorization_url
    return next_url, attempt.expires_at


async def provider_of(uow: BrokerUnitOfWork, connection: Connection) -> Provider:
    """A connection's provider; the foreign key guarantees there is one."""
    provider = await uow.providers.get(connection.provider_id)
    if provider is None:
        raise Internal(f"connection {connection.id} has lost its provider")
    return provider


async def client_credentials(uow: BrokerUnitOfWork, provider: Provider) -> ClientCredentials:
    return ClientCredentials(
        client_id=provider.spec.client_id,
        client_secret=await uow.providers.client_secret(provider.id),
        auth_method=provider.params.token_endpoint_auth_method,
    )


_FINISH_ACTIONS = {
    ConnectionStatus.ACTIVE: "connection.activate",
    ConnectionStatus.UNCONFIRMED: "connection.complete",
    ConnectionStatus.FAILED: "connection.fail",
}


async def _finish(
    connection: Connection,
    attempt: Attempt,
    deps: ConnectionDeps,
    now: datetime,
    *,
    status: str,
    error: str = "",
    confirmation: str | None = None,
    claimed: bool = False,
    **stored: Any,
) -> Connection:
    """Consume the attempt and record the outcome in one transaction, so a
    replayed state can never overwrite what the first use stored; a
    ``claimed`` attempt was consumed already, by ``_claim``. An unconfirmed
    outcome keeps its ``confirmation`` code's hash, and has until
    ``pending_ttl`` from now to be confirmed."""
    pending_until = now + deps.pending_ttl if status == ConnectionStatus.UNCONFIRMED else None
    finished = replace(
        connection, status=status, updated_at=now, pending_until=pending_until, last_error=error
    )
    async with deps.uow() as uow:
        if not claimed and not await uow.attempts.consume(attempt.id, now):
            raise StateInvalid(
                "this authorization link was already used; start the connection again"
            )
        if not await uow.connections.save(finished, read_at=connection.updated_at, **stored):
            raise StateInvalid("this connection changed while it was being completed")
        if confirmation is not None:
            await uow.attempts.set_confirmation(attempt.id, _confirmation_hash(confirmation))
        await uow.audit.add(connection_event(_FINISH_ACTIONS[status], finished, now, error=error))
        await uow.commit()
    return finished


async def _succeed(
    connection: Connection,
    attempt: Attempt,
    deps: ConnectionDeps,
    now: datetime,
    *,
    browser: bool,
    claimed: bool = False,
    **stored: Any,
) -> tuple[Connection, str]:
    """Store what the provider or the user gave, and return where the browser
    goes. A browser's completion of a connection that asked for confirmation
    leaves it unconfirmed, with a one-time code for the app: the browser that
    finished may not be its user's (RFC 9700 §4.7)."""
    if not (browser and attempt.confirmation_required):
        activated = await _finish(
            connection,
            attempt,
            deps,
            now,
            status=ConnectionStatus.ACTIVE,
            claimed=claimed,
            **stored,
        )
        return activated, _outcome_url(activated)
    confirmation = secrets.token_urlsafe(32)
    unconfirmed = await _finish(
        connection,
        attempt,
        deps,
        now,
        status=ConnectionStatus.UNCONFIRMED,
        confirmation=confirmation,
        claimed=claimed,
        **stored,
    )
    return unconfirmed, append_query(
        unconfirmed.return_url,
        status="success",
        connection_id=unconfirmed.id,
        confirmation=confirmation,
    )


@dataclass(frozen=True)
class AuthorizationResponse:
    """What the provider's redirect brought to ``/v1/callback/{provider}``."""

    state: str
    code: str
    error: str
    callback_provider: str
    iss: str | None
    binding: str


def _mix_up(attempt: Attempt, provider: Provider, response: AuthorizationResponse) -> str:
    """The reason to refuse an authorization response that may come from another
    provider than the one asked (RFC 9700 §4.4); empty when it came from ours."""
    if attempt.redirect_uri is None or not attempt.redirect_uri.endswith(
        CALLBACK_PATH + response.callback_provider
    ):
        return CallbackProviderMismatch.reason
    iss = response.iss
    if iss is None:
        return IssuerMismatch.reason if provider.sends_iss else ""
    # RFC 9207 §2.4: simple string comparison with the issuer the request went to.
    if provider.spec.issuer and iss != provider.spec.issuer:
        return IssuerMismatch.reason
    return ""


def _outcome_url(connection: Connection) -> str:
    if connection.status == ConnectionStatus.ACTIVE:
        return append_query(connection.return_url, status="success", connection_id=connection.id)
    return append_query(
        connection.return_url,
        status="error",
        error=connection.last_error,
        connection_id=connection.id,
    )


_OAUTH_ERROR_CODES = frozenset(
    {
        "access_denied",
        "invalid_request",
        "unauthorized_client",
        "unsupported_response_type",
        "invalid_scope",
        "server_error",
        "temporarily_unavailable",
        "interaction_required",
        "login_required",
        "consent_required",
    }
)


async def complete_authorization(response: AuthorizationResponse, deps: ConnectionDeps) -> str:
    """Handle the provider's redirect; return where the browser goes next."""
    attempt, connection, provider = await _open_attempt(response.state, deps)
    if attempt.code_verifier is None:
        raise StateInvalid("this connection is completed with credentials, not through a provider")
    _check_binding(attempt, response.binding)
    code, error = response.code, response.error
    now = deps.now()
    mix_up = _mix_up(attempt, provider, response)
    if mix_up:
        # The code may be another provider's: never redeem it here.
        failed = await _finish(
            connection, attempt, deps, now, status=ConnectionStatus.FAILED, error=mix_up
        )
        return _outcome_url(failed)
    # RFC 6749 §4.1.3: the exchange repeats the redirect URI the request carried.
    redirect_uri = attempt.redirect_uri
    assert redirect_uri is not None  # _mix_up refused an attempt without one
    if error or not code:
        # Only RFC 6749 §4.1.2.1 codes are echoed; anything else could be injected text.
        reason = error if error in _OAUTH_ERROR_CODES else "authorization_failed"
        failed = await _finish(
            connection, attempt, deps, now, status=ConnectionStatus.FAILED, error=reason
        )
        return _outcome_url(failed)
    if provider.endpoints_pending:
        # Started before the move: its code must not go to the moved token endpoint.
        failed = await _finish(
            connection,
            attempt,
            deps,
            now,
            status=ConnectionStatus.FAILED,
            error="provider_endpoints_pending",
        )
        return _outcome_url(failed)
    await _claim(attempt, deps, now)
    async with deps.uow() as uow:
        client = await client_credentials(uow, provider)
    try:
        tokens, id_token = await deps.tokens.exchange_code(
            provider.token_url,
            client,
            code=code,
            redirect_uri=redirect_uri,
            code_verifier=attempt.code_verifier,
            scopes=None if provider.params.skip_scope_on_exchange else connection.scopes,
            now=now,
        )
        if id_token is not None and provider.spec.issuer and provider.jwks_uri:
            await deps.id_tokens.verify(
                id_token,
                issuer=provider.spec.issuer,
                jwks_uri=provider.jwks_uri,
                client_id=provider.spec.client_id,
                nonce=attempt.nonce,
            )
    except (TokenEndpointError, IdTokenError) as exc:
        reason = (
            "token_exchange_failed" if isinstance(exc, TokenEndpointError) else "invalid_id_token"
        )
        failed = await _finish(
            connection,
            attempt,
            deps,
            now,
            status=ConnectionStatus.FAILED,
            error=reason,
            claimed=True,
        )
        return _outcome_url(failed)
    _, url = await _succeed(
        replace(
            connection,
            token_expires_at=tokens.expires_at,
            last_refreshed_at=now,
            next_refresh_at=deps.refresh.next_refresh(tokens, now, deps.random()),
        ),
        attempt,
        deps,
        now,
        browser=True,
        claimed=True,
        tokens=tokens,
    )
    return url


async def _claim(attempt: Attempt, deps: ConnectionDeps, now: datetime) -> None:
    """Consume the attempt, committed, before its code is redeemed: of
    callbacks replayed at once by the bound browser only one gets past here,
    so the code is sent to the token endpoint once (RFC 6749 §4.1.2, §10.5)."""
    async with deps.uow() as uow:
        if not await uow.attempts.consume(attempt.id, now):
            raise StateInvalid(
                "this authorization link was already used; start the connection again"
            )
        await uow.commit()


@dataclass(frozen=True)
class CaptureForm:
    provider: Provider
    fields: tuple[CredentialField, ...]
    # Where the page's form may lead the browser: the return URL's origin.
    return_origin: str


async def _open_capture(
    state: str, binding: str | None, deps: ConnectionDeps
) -> tuple[Attempt, Connection, Provider]:
    """A capture state's attempt; ``binding`` None is the backend that asked
    for the connection, which needs no browser."""
    attempt, connection, provider = await _open_attempt(state, deps)
    if provider.spec.auth_type not in STATIC_AUTH_TYPES:
        raise StateInvalid(
            "this connection is completed through the provider, not with credentials"
        )
    if binding is not None:
        _check_binding(attempt, binding)
    return attempt, connection, provider


async def capture_form(state: str, binding: str, deps: ConnectionDeps) -> CaptureForm:
    _, connection, provider = await _open_capture(state, binding, deps)
    return CaptureForm(provider, capture_fields(provider), origin_of(connection.return_url))


async def _live_check(
    attempt: Attempt,
    connection: Connection,
    provider: Provider,
    accepted: Mapping[str, str],
    deps: ConnectionDeps,
) -> Connection | None:
    """Try the credentials at the provider, within the state's limit of checks.
    Returns the failed connection when the last check failed and spent the state."""
    async with deps.uow() as uow:
        spent = await uow.attempts.spend_check(attempt.id, CAPTURE_CHECK_LIMIT)
        await uow.commit()
    if spent is None:
        raise CaptureAttemptsExhausted(
            f"all {CAPTURE_CHECK_LIMIT} tries of this link are used; start the connection again"
        )
    try:
        await deps.checker.check(provider, accepted)
    except CredentialsRejected:
        if spent < CAPTURE_CHECK_LIMIT:
            raise
        return await _finish(
            connection,
            attempt,
            deps,
            deps.now(),
            status=ConnectionStatus.FAILED,
            error=CaptureAttemptsExhausted.reason,
        )
    return None


async def capture_credentials(
    state: str, values: Mapping[str, str], deps: ConnectionDeps, *, binding: str | None = None
) -> tuple[Connection, str]:
    """Store static credentials for a pending connection. The outcome is the
    connection, active, unconfirmed or (all checks spent) failed, and the
    return URL with it. The backend's own capture (no ``binding``) needs no
    confirmation: the backend that asked for the connection completed it."""
    attempt, connection, provider = await _open_capture(state, binding, deps)
    accepted = validate_static_credentials(provider, values)
    # Checked live before anything is stored or the state is spent, so a typo can be retried.
    exhausted = await _live_check(attempt, connection, provider, accepted, deps)
    if exhausted is not None:
        return exhausted, _outcome_url(exhausted)
    return await _succeed(
        connection, attempt, deps, deps.now(), browser=binding is not None, static=accepted
    )


def connection_not_found(connection_id: str) -> ConnectionNotFound:
    """The one answer for a connection that does not exist, and, to an agent,
    for one that is not its to reach (``access.seen_by``): the two read the same."""
    return ConnectionNotFound(
        f"there is no connection {connection_id!r} that this caller may use",
        connection_id=connection_id,
    )


async def load_connection(uow: BrokerUnitOfWork, connection_id: str) -> Connection:
    if not connection_id:
        raise ValidationFailed("connection_id is required", field="connection_id")
    connection = await uow.connections.get(connection_id)
    if connection is None:
        raise connection_not_found(connection_id)
    return connection


async def check_connection(connection_id: str, deps: ConnectionDeps) -> tuple[Connection, Provider]:
    async with deps.uow() as uow:
        connection = await load_connection(uow, connection_id)
        provider = await provider_of(uow, connection)
    return replace(connection, status=connection.status_at(deps.now())), provider


@dataclass(frozen=True)
class ConnectionPage:
    connections: list[tuple[Connection, Provider]]
    next_page_token: str


async def list_connections(
    workspace_id: str, requested_size: int, page_token: str, deps: ConnectionDeps
) -> ConnectionPage:
    if not workspace_id:
        raise ValidationFailed("workspace_id is required", field="workspace_id")
    filters = {"workspace_id": workspace_id}
    position = deps.registry.pages.decode(page_token, filters)
    after = (datetime.fromisoformat(position[0]), position[1]) if position else None
    limit = page_size(requested_size)
    now = deps.now()
    async with deps.uow() as uow:
        found = await uow.connections.list_for_workspace(workspace_id, after, limit + 1)
        page = found[:limit]
        listed = [(replace(c, status=c.status_at(now)), await provider_of(uow, c)) for c in page]
    token = ""
    if len(found) > limit:
        token = deps.registry.pages.encode([page[-1].created_at.isoformat(), page[-1].id], filters)
    return ConnectionPage(listed, token)


async def confirm_connection(
    connection_id: str, confirmation: str, deps: ConnectionDeps
) -> tuple[Connection, Provider]:
    """The app that asked for the connection confirms it with the code the
    browser brought to return_url: it becomes active. A wrong, used or expired
    code changes nothing."""
    now = deps.now()
    async with deps.uow() as uow:
        connection = await load_connection(uow, connection_id)
        provider = await provider_of(uow, connection)
        attempt = await uow.attempts.of_connection(connection_id)
    status = connection.status_at(now)
    if status == ConnectionStatus.EXPIRED and connection.status == ConnectionStatus.UNCONFIRMED:
        raise ConfirmationInvalid(
            "the time to confirm this connection has run out; start a new one", status=status
        )
    if status != ConnectionStatus.UNCONFIRMED or attempt is None:
        raise ConfirmationInvalid(
            f"this connection is {status}, not waiting for confirmation", status=status
        )
    expected = attempt.confirmation_hash or ""
    presented = _confirmation_hash(confirmation) if _CONFIRMATION.fullmatch(confirmation) else ""
    if not expected or not hmac.compare_digest(expected, presented):
        raise ConfirmationInvalid("this is not the confirmation code of this connection")
    confirmed = replace(
        connection, status=ConnectionStatus.ACTIVE, updated_at=now, pending_until=None
    )
    async with deps.uow() as uow:
        if not (
            await uow.attempts.use_confirmation(attempt.id, expected)
            and await uow.connections.save(confirmed, read_at=connection.updated_at)
        ):
            raise ConfirmationInvalid("this confirmation code was used meanwhile")
        await uow.audit.add(connection_event("connection.confirm", confirmed, now))
        await uow.commit()
    return confirmed, provider


async def _revoke_at_provider(
    provider: Provider,
    client: ClientCredentials,
    tokens: TokenSet | None,
    now: datetime,
    deps: ConnectionDeps,
    lease: Lease,
) -> str:
    """Revoke the tokens at the provider when it has a revocation endpoint, under
    the refresh lease; a note for last_error when the provider did not confirm."""
    if tokens is None or not provider.revocation_url:
        return ""
    if provider.endpoints_pending:
        return "not revoked at the provider: its moved endpoints await confirmation"
    held = tokens
    try:
        await deps.leases.call(
            lease, lambda: revoke_tokens(deps.tokens, provider.revocation_url, client, held, now)
        )
    except TokenEndpointError as exc:
        return f"the provider did not confirm: {exc.message}"
    return ""


async def _end_with_revocation(
    lease: Lease,
    connection: Connection,
    provider: Provider,
    client: ClientCredentials,
    tokens: TokenSet | None,
    deps: ConnectionDeps,
    *,
    status: str,
    action: str,
    why: str,
) -> Connection | None:
    """End a connection whose lease this broker holds: revoke its tokens at the
    provider, wipe them, release the lease and audit ``action``, in that order.
    None when the lease was lost meanwhile (nothing is written then)."""
    now = deps.now()
    note = await _revoke_at_provider(provider, client, tokens, now, deps, lease)
    # An expiry always says why; a revoke only when the provider did not confirm it.
    said = why if note or status == ConnectionStatus.EXPIRED else ""
    ended = replace(
        connection,
        status=status,
        updated_at=now,
        next_refresh_at=None,
        last_error="; ".join(filter(None, [said, note])),
    )
    async with deps.uow() as uow:
        if not await uow.connections.save(ended, lease=lease, wipe_credentials=True):
            return None
        await uow.connections.release(lease)
        await uow.audit.add(
            connection_event(
                action,
                ended,
                now,
                at_provider=bool(tokens and provider.revocation_url and not note),
            )
        )
        await uow.commit()
    return ended


async def _expire(connection_id: str, deps: ConnectionDeps) -> bool:
    """Expire one unconfirmed connection past its deadline: its tokens are
    revoked at the provider, and forgotten. False when another broker (or a
    revoke or delete) got there first."""
    async with deps.leases.held(connection_id) as lease:
        async with deps.uow() as uow:
            connection = await load_connection(uow, connection_id)
            provider = await provider_of(uow, connection)
            tokens = await uow.connections.tokens(connection_id)
            client = await client_credentials(uow, provider)
        now = deps.now()
        # Judged clock_skew late, so that a replica whose clock runs behind
        # cannot accept a confirmation for tokens this one is revoking.
        if connection.status != ConnectionStatus.UNCONFIRMED or (
            connection.status_at(now - deps.clock_skew) != ConnectionStatus.EXPIRED
        ):
            return False
        expired = await _end_with_revocation(
            lease,
            connection,
            provider,
            client,
            tokens,
            deps,
            status=ConnectionStatus.EXPIRED,
            action="connection.expire",
            why="not confirmed in time",
        )
    return expired is not None


async def expire_unconfirmed(deps: ConnectionDeps, batch: int = 50) -> int:
    """Expire the unconfirmed connections whose time ran out; how many."""
    async with deps.uow() as uow:
        due = await uow.connections.unconfirmed_past(deps.now() - deps.clock_skew, batch)
    return sum([await _expire(connection_id, deps) for connection_id in due])


async def revoke_connection(
    connection_id: str, deps: ConnectionDeps
) -> tuple[Connection, Provider]:
    """Revoke locally, and at the provider when it has a revocation endpoint.
    The stored credentials are wiped either way. Done under the refresh lease:
    a refresh in flight (in any broker) finishes first, and the tokens it
    minted are the ones revoked."""
    async with deps.uow() as uow:
        connection = await load_connection(uow, connection_id)
        provider = await provider_of(uow, connection)
    if connection.status == ConnectionStatus.REVOKED:
        return connection, provider
    async with deps.leases.held(connection_id) as lease:
        async with deps.uow() as uow:
            connection = await load_connection(uow, connection_id)
            tokens = await uow.connections.tokens(connection_id)
            client = await client_credentials(uow, provider)
        if connection.status == ConnectionStatus.REVOKED:
            return connection, provider
        revoked = await _end_with_revocation(
            lease,
            connection,
            provider,
            client,
            tokens,
            deps,
            status=ConnectionStatus.REVOKED,
            action="connection.revoke",
            why="revoked in Nexus",
        )
        if revoked is None:
            raise ConnectionNotActive(
                "the connection changed meanwhile; try again", status=connection.status
            )
    return revoked, provider


async def delete_connection(connection_id: str, deps: ConnectionDeps) -> None:
    """Forget a connection; live tokens are revoked first so none outlive it."""
    async with deps.uow() as uow:
        connection = await load_connection(uow, connection_id)
    if connection.status in (
        ConnectionStatus.ACTIVE,
        ConnectionStatus.ATTENTION,
        ConnectionStatus.UNCONFIRMED,
    ):
        connection, _ = await revoke_connection(connection_id, deps)
    now = deps.now()
    async with deps.uow() as uow:
        await uow.connections.delete(connection_id)
        await uow.audit.add(connection_event("connection.delete", connection, now))
        await uow.commit()
