"""Asking the policy service before a credential is released or refreshed,
and recording both answers in the audit trail."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nexus_common import AgentPrincipal, AuditEvent, NexusError, Principal

from ..adapters.policy_client import AccessGrant, PolicyClient
from ..domain.connections import Connection, TokenSet
from ..domain.providers import AuthType, Provider
from .connections import ConnectionDeps, connection_not_found, load_connection, provider_of

__all__ = [
    "Decide",
    "audit_denial",
    "authorize_connection",
    "connection_decision",
    "seen_by",
]

log = logging.getLogger("nexus.access")

# Denials that say where a connection the caller named lives: to an agent
# they would name another workspace or provider, and tell a connection that
# exists from one that does not.
_ABOUT_THE_CONNECTION = frozenset(
    {"PROVIDER_NOT_BOUND", "WORKSPACE_NOT_BOUND", "USER_WORKSPACE_NOT_OWNED"}
)


def seen_by(caller: Principal, error: NexusError, connection_id: str) -> NexusError:
    """The denial as ``caller`` may see it once the audit holds the details:
    an agent that named someone else's connection learns only that it has
    none by that id."""
    if isinstance(caller, AgentPrincipal) and error.reason in _ABOUT_THE_CONNECTION:
        return connection_not_found(connection_id)
    return error


def _agent_of(caller: Principal) -> str:
    return caller.agent_id if isinstance(caller, AgentPrincipal) else ""


async def audit_denial(
    deps: ConnectionDeps, event: str, resource: str, error: NexusError, **details: object
) -> None:
    """Record a refusal; the caller must still learn why, so a failure to
    record is logged rather than raised."""
    record = AuditEvent.record(
        event, resource, deps.now(), outcome="denied", reason=error.reason, **details
    )
    try:
        async with deps.uow() as uow:
            await uow.audit.add(record)
            await uow.commit()
    except Exception:
        log.exception("could not record a denial (%s) of %s", error.reason, resource)


Decide = Callable[[Connection, Provider, tuple[str, ...]], Awaitable[AccessGrant]]


def connection_decision(
    caller: Principal, action: str, deps: ConnectionDeps, policy: PolicyClient
) -> Decide:
    """Ask whether ``caller`` may take ``action`` on a connection, given what it
    was granted; a denial is audited and raised."""

    async def decide(
        connection: Connection, provider: Provider, granted: tuple[str, ...]
    ) -> AccessGrant:
        try:
            return await policy.authorize(caller, action, provider, connection, granted)
        except NexusError as error:
            await audit_denial(
                deps,
                "access.denied",
                f"connections/{connection.id}",
                error,
                attempted=action,
                agent_id=_agent_of(caller),
                workspace_id=connection.workspace_id,
                provider=provider.name,
            )
            hidden = seen_by(caller, error, connection.id)
            if hidden is error:
                raise
            raise hidden from None

    return decide


async def authorize_connection(
    caller: Principal,
    action: str,
    connection_id: str,
    deps: ConnectionDeps,
    policy: PolicyClient,
) -> tuple[Connection, Provider, TokenSet | None]:
    """The connection, its provider and (for OAuth) its tokens, once the policy
    service allowed ``caller`` to take ``action`` on it."""
    async with deps.uow() as uow:
        connection = await load_connection(uow, connection_id)
        provider = await provider_of(uow, connection)
        tokens = (
            await uow.connections.tokens(connection_id)
            if provider.spec.auth_type == AuthType.OAUTH2
            else None
        )
    decide = connection_decision(caller, action, deps, policy)
    await decide(connection, provider, connection.granted_scopes(tokens))
    return connection, provider, tokens
