"""Handing out credentials, and refreshing OAuth tokens exactly once at a time.

Refreshes are single-flight twice over: within a broker, concurrent callers
share one in-flight refresh; across brokers, a fenced lease on the connection
row (see leases.py) lets one replica refresh while the others wait for its
result. A rotated refresh token is stored in the same transaction that
releases the lease, so it is never lost while the lease holds; a result whose
lease was taken over is discarded, never written over the new holder's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from nexus_common import (
    ConnectionNotActive,
    ConnectionReauthRequired,
    Internal,
    Principal,
    ProviderEndpointsPending,
    ProviderUnavailable,
    RefreshNotSupported,
    RefreshRateLimited,
    SessionNotSupported,
    retry_stale,
)

from ..adapters.group_commit import GroupCommit
from ..adapters.policy_client import PolicyClient
from ..adapters.rfc6749 import ClientCredentials, TokenEndpointError
from ..adapters.rfc7009 import revoke_tokens
from ..adapters.writes import connection_tag
from ..domain.access import Action
from ..domain.connections import Connection, ConnectionStatus, Lease, TokenSet
from ..domain.credentials import TokenPayload, oauth2_payload, static_payload
from ..domain.providers import AuthType, Provider
from ..metrics import TOKEN_REFRESHES
from .access import Decide, audit_denial, authorize_connection, connection_decision
from .connections import (
    ConnectionDeps,
    client_credentials,
    connection_event,
    load_connection,
    provider_of,
)
from .leases import RefreshLeases
from .outcomes import Outcome, outcome_writer
from .releases import release_snapshot

__all__ = [
    "Refresher",
    "get_token",
    "refresh_connection",
    "release_token",
    "require_active",
]

log = logging.getLogger("nexus.refresh")

_NOT_ACTIVE = {
    ConnectionStatus.PENDING: "the connection is still waiting for the user to authorize it",
    ConnectionStatus.UNCONFIRMED: "the connection is waiting for the app to confirm it",
    ConnectionStatus.FAILED: "the connection failed to complete; start a new one",
    ConnectionStatus.REVOKED: "the connection was revoked",
    ConnectionStatus.EXPIRED: "the connection was never completed and has expired",
}


# What a refresh under a lease works from: the connection as claimed, its
# tokens, its provider and the client credentials for the provider.
_Loaded = tuple[Connection, TokenSet | None, Provider, ClientCredentials]
# One claimed connection's refresh, to run as a task.
_Refresh = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class Refresher:
    """Refreshes tokens for one broker; shared by GetToken and the refresh loop."""

    deps: ConnectionDeps
    # Keyed by (connection, forced): a forced refresh must not settle for an
    # unforced one that found nothing to do.
    _inflight: dict[tuple[str, bool], asyncio.Future[None]] = field(default_factory=dict)
    _outcomes: GroupCommit[Outcome] = field(init=False)

    def __post_init__(self) -> None:
        self._outcomes = outcome_writer(self.deps.uow)

    async def close(self) -> None:
        """Store the outcomes still queued."""
        await self._outcomes.close()

    @property
    def leases(self) -> RefreshLeases:
        return self.deps.leases

    async def refresh(self, connection_id: str, *, force: bool) -> None:
        """Refresh unless a refresh (here or in another broker) makes it unnecessary."""
        key = (connection_id, force)
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._refresh_once(connection_id, force=force))
            self._inflight[key] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(key, None))
        await asyncio.shield(pending)

    async def narrowed(self, connection_id: str, scopes: tuple[str, ...]) -> TokenSet:
        """A token carrying only ``scopes``, from a refresh grant that asks for
        fewer (RFC 6749 §6). It is handed out, never stored, so the connection
        keeps its full grant; a rotated refresh token is stored under the lease."""
        async with self.leases.held(connection_id) as lease:
            async with self.deps.uow() as uow:
                connection = await load_connection(uow, connection_id)
                tokens = await uow.connections.tokens(connection_id)
                provider = await provider_of(uow, connection)
                client = await client_credentials(uow, provider)
            now = self.deps.now()
            # Revoked (or needing the user) while this broker waited for the lease.
            require_active(connection, provider, now)
            provider.require_endpoints_confirmed()
            if tokens is None or not tokens.refresh_token:
                raise SessionNotSupported(
                    f"{provider.name} issued no refresh token for this connection, so "
                    "Nexus cannot narrow its scopes"
                )
            self._check_narrowing_limit(connection, provider, now)
            # Counted before the call: a failed one was a provider call too.
            async with self.deps.uow() as uow:
                counted = await uow.connections.note_narrowing(lease, now)
                await uow.commit()
            if not counted:
                raise ProviderUnavailable(
                    "another broker took over this connection's refresh meanwhile; retry"
                )
            try:
                fresh = await self._redeem(
                    lease, provider, client, tokens.refresh_token, scopes=scopes, now=now
                )
            except TokenEndpointError as exc:
                raise ProviderUnavailable(
                    f"{provider.name} did not issue a token narrowed to the requested "
                    f"scopes: {exc.message}"
                ) from exc
            if fresh.refresh_token and fresh.refresh_token != tokens.refresh_token:
                async with self.deps.uow() as uow:
                    saved = await uow.connections.save(
                        replace(connection, updated_at=now, last_narrowed_at=now),
                        lease=lease,
                        tokens=replace(tokens, refresh_token=fresh.refresh_token),
                    )
                    await uow.commit()
                if not saved:
                    await self._discard(lease, connection, provider, client, tokens, fresh)
                    raise ProviderUnavailable(
                        "another broker took over this connection's refresh meanwhile; retry"
                    )
            return fresh

    def _check_narrowing_limit(
        self, connection: Connection, provider: Provider, now: datetime
    ) -> None:
        wait = self.deps.refresh.narrowing_wait(connection, now)
        if wait is None:
            return
        seconds = max(1, round(wait.total_seconds()))
        raise RefreshRateLimited(
            f"a token narrowed to other scopes was asked of {provider.name} moments ago, or "
            f"the provider is failing; no narrower token is asked for {seconds} s",
            connection_id=connection.id,
            retry_after_seconds=str(seconds),
        )

    async def _redeem(
        self,
        lease: Lease,
        provider: Provider,
        client: ClientCredentials,
        refresh_token: str,
        *,
        scopes: tuple[str, ...] | None,
        now: datetime,
        calls: asyncio.Semaphore | None = None,
    ) -> TokenSet:
        """One refresh grant at the provider, cut off before the lease could
        lapse; made once one of ``calls`` is free, when given."""
        async with calls or contextlib.nullcontext():
            return await self.leases.call(
                lease,
                lambda: self.deps.tokens.refresh(
                    provider.token_url, client, refresh_token=refresh_token, scopes=scopes, now=now
                ),
            )

    async def _refresh_once(self, connection_id: str, *, force: bool) -> None:
        started = self.deps.now()
        deadline = started + timedelta(seconds=self.leases.wait_seconds)
        while True:
            now = self.deps.now()
            async with self.deps.uow() as uow:
                connection = await load_connection(uow, connection_id)
                if connection.status != ConnectionStatus.ACTIVE:
                    return
                refreshed_elsewhere = (
                    connection.last_refreshed_at is not None
                    and connection.last_refreshed_at >= started
                )
                # Read under the lease's transaction: a forced refresh that lost the
                # race to another one (here or in another broker) has nothing to do.
                limited = force and self.deps.refresh.forced_refresh_wait(connection, now)
                if refreshed_elsewhere or limited or (not force and not self.due(connection, now)):
                    return
                lease = await self.leases.try_claim(uow, connection_id)
                await uow.commit()
            if lease is not None:
                await self.refresh_claimed(lease)
                return
            if now >= deadline:
                raise ProviderUnavailable(
                    "another broker is still refreshing this connection; retry"
                )
            await asyncio.sleep(0.1)

    def due(self, connection: Connection, now: datetime) -> bool:
        """Whether handing out the token needs a refresh first. While the provider
        is failing, its backoff holds here too: callers cannot storm it."""
        expires = connection.token_expires_at
        skew = timedelta(seconds=self.deps.refresh.expiry_skew_seconds)
        backing_off = (
            connection.refresh_failures > 0
            and connection.next_refresh_at is not None
            and connection.next_refresh_at > now
        )
        return expires is not None and expires - now <= skew and not backing_off

    async def refresh_claimed(self, lease: Lease) -> None:
        """Refresh a connection whose lease this broker holds (claimed alone)."""
        await self._settle(lease, lambda: self._load(lease))

    async def _load(self, lease: Lease) -> _Loaded:
        async with self.deps.uow() as uow:
            connection = await load_connection(uow, lease.connection_id)
            tokens = await uow.connections.tokens(lease.connection_id)
            provider = await provider_of(uow, connection)
            client = await client_credentials(uow, provider)
        return connection, tokens, provider, client

    async def _settle(
        self,
        lease: Lease,
        load: Callable[[], Awaitable[_Loaded]],
        calls: asyncio.Semaphore | None = None,
    ) -> None:
        """Refresh under ``lease`` from what ``load`` reads. However it ends,
        the lease is released: with the outcome, or, on a failure nobody
        foresaw, with the failure recorded and a backoff before the next try."""
        recorded = False
        try:
            recorded = await self._refresh_leased(lease, *await load(), calls=calls)
        except Exception as exc:
            recorded = await self._record_unexpected(lease, exc)
        finally:
            # An outcome's write released it already (or found it taken over).
            if not recorded:
                await self.leases.release(lease)

    async def _refresh_leased(
        self,
        lease: Lease,
        connection: Connection,
        tokens: TokenSet | None,
        provider: Provider,
        client: ClientCredentials,
        *,
        calls: asyncio.Semaphore | None,
    ) -> bool:
        """Refresh and record the outcome; False when there was nothing to
        record (and so the lease is still held)."""
        if connection.status != ConnectionStatus.ACTIVE:
            return False  # revoked (or needing the user) since it was found due
        if provider.endpoints_pending:
            return False  # nothing goes to moved endpoints before they are confirmed
        now = self.deps.now()
        if tokens is not None and not tokens.refresh_token and not tokens.expires_within(now, 0):
            return False  # nothing to refresh and nothing wrong: a token that is still good
        if tokens is None or not tokens.refresh_token:
            await self._record(
                lease,
                connection,
                now,
                status=ConnectionStatus.ATTENTION,
                error="the provider gave no refresh token; the user must reconnect",
            )
            return True
        narrowed = provider.params.supports_scope_narrowing and connection.scopes
        try:
            fresh = await self._redeem(
                lease,
                provider,
                client,
                tokens.refresh_token,
                scopes=connection.scopes if narrowed else None,
                now=now,
                calls=calls,
            )
        except TokenEndpointError as exc:
            await self._record_provider_error(lease, connection, now, exc)
            return True
        merged = tokens.after_refresh(fresh)
        stored = await self._record(
            lease,
            replace(connection, token_expires_at=merged.expires_at, last_refreshed_at=now),
            now,
            tokens=merged,
            next_refresh_at=self.deps.refresh.next_refresh(merged, now, self.deps.random()),
        )
        if not stored:
            await self._discard(lease, connection, provider, client, tokens, fresh)
        return True

    async def _record_provider_error(
        self, lease: Lease, connection: Connection, now: datetime, exc: TokenEndpointError
    ) -> None:
        if not exc.transient:
            await self._record(
                lease,
                connection,
                now,
                status=ConnectionStatus.ATTENTION,
                error=f"{exc.message}; the user must reconnect",
            )
            return
        failures = connection.refresh_failures + 1
        wait = self.deps.refresh.backoff(failures, exc.retry_after, self.deps.random())
        await self._record(
            lease,
            connection,
            now,
            failures=failures,
            error=exc.message,
            next_refresh_at=now + wait,
        )

    async def _record_unexpected(self, lease: Lease, exc: Exception) -> bool:
        """A fault nobody foresaw (a bug, a replica missing a key): recorded as a
        failed refresh that backs off like a failing provider, never retried hot.
        Only the exception's type is stored: its text may quote a secret.
        False when it could not be recorded."""
        log.exception("refreshing connection %s failed unexpectedly", lease.connection_id)
        try:
            async with self.deps.uow() as uow:
                connection = await load_connection(uow, lease.connection_id)
            now = self.deps.now()
            failures = connection.refresh_failures + 1
            await self._record(
                lease,
                connection,
                now,
                failures=failures,
                error=f"the refresh failed unexpectedly ({type(exc).__name__}); retrying later",
                next_refresh_at=now + self.deps.refresh.backoff(failures, None, self.deps.random()),
            )
        except Exception:
            log.exception("could not record the failed refresh of %s", lease.connection_id)
            return False
        return True

    async def _discard(
        self,
        lease: Lease,
        connection: Connection,
        provider: Provider,
        client: ClientCredentials,
        spent: TokenSet,
        fresh: TokenSet,
    ) -> None:
        """A result this broker may no longer store: its lease was taken over.
        The row is the new holder's, who learns the grant's state from the
        provider itself. A rotated refresh token minted here is lost with this
        result and no one could ever revoke it later, so it is revoked now
        (with its access token) where the provider allows."""
        rotated = bool(fresh.refresh_token) and fresh.refresh_token != spent.refresh_token
        revoked = False
        now = self.deps.now()
        if rotated and provider.revocation_url and not provider.endpoints_pending:
            try:
                async with asyncio.timeout(self.leases.call_seconds):
                    await revoke_tokens(
                        self.deps.tokens, provider.revocation_url, client, fresh, now
                    )
                revoked = True
            except (TokenEndpointError, TimeoutError):
                pass
        log.warning(
            "connection %s: its refresh lease was taken over before the result was "
            "stored; the result is discarded (rotated refresh token: %s, revoked: %s)",
            lease.connection_id,
            rotated,
            revoked,
        )
        TOKEN_REFRESHES.labels("discarded").inc()
        async with self.deps.uow() as uow:
            await uow.audit.add(
                connection_event(
                    "refresh.discarded",
                    connection,
                    now,
                    rotated=rotated,
                    revoked_at_provider=revoked,
                )
            )
            await uow.commit()

    async def _record(
        self,
        lease: Lease,
        connection: Connection,
        now: datetime,
        *,
        status: str = ConnectionStatus.ACTIVE,
        error: str = "",
        failures: int = 0,
        next_refresh_at: datetime | None = None,
        tokens: TokenSet | None = None,
    ) -> bool:
        """Store the outcome and release the lease in one transaction (shared
        with other refreshes' outcomes), only while this broker still holds the
        lease. False: the outcome was not stored."""
        outcome = replace(
            connection,
            status=status,
            last_error=error,
            refresh_failures=failures,
            next_refresh_at=next_refresh_at,
            updated_at=now,
        )
        action = "refresh.succeeded" if tokens is not None else "refresh.failed"
        event = connection_event(
            action, outcome, now, status=status, error=error, failures=failures
        )
        saved = await self._outcomes.record(Outcome(lease, outcome, tokens, event))
        if saved:
            TOKEN_REFRESHES.labels(_refresh_outcome(tokens, status)).inc()
        return saved

    async def run(self, interval: float, concurrency: int = 8) -> None:
        """The background loop: up to ``concurrency`` provider calls in flight,
        and twice as many connections claimed, so that a call starts as soon as
        another ends, while refreshes that have called store their outcomes.
        Connections are claimed only for free places, so a claimed lease waits
        at most one provider call (itself cut off within the lease) before its
        own call starts; a new claim waits until half the places are free.
        When fewer are due than there are places, it looks again after ``interval``."""
        calls = asyncio.Semaphore(concurrency)
        places = 2 * concurrency
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                free = places - len(running)
                claimed: list[_Refresh] = []
                try:
                    claimed = await self._claim_batch(free, calls)
                except Exception:
                    log.exception("claiming due connections failed")
                for refresh in claimed:
                    task = asyncio.create_task(refresh())
                    running.add(task)
                    task.add_done_callback(running.discard)
                if len(claimed) < free:
                    await asyncio.sleep(interval)
                while places - len(running) < concurrency:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def claim_due(self, batch: int) -> list[Lease]:
        """Claim up to ``batch`` due connections, to refresh with ``refresh_claimed``."""
        async with self.deps.uow() as uow:
            claimed = await self.leases.claim_due(uow, batch)
            await uow.commit()
        return [lease for lease, _, _ in claimed]

    async def _claim_batch(self, batch: int, calls: asyncio.Semaphore) -> list[_Refresh]:
        """Claim up to ``batch`` due connections, reading them with the claim
        and their providers once for the batch; one refresh for each."""
        async with self.deps.uow() as uow:
            claimed = await self.leases.claim_due(uow, batch)
            await uow.commit()
        if not claimed:
            return []
        providers: dict[str, tuple[Provider, ClientCredentials] | Exception] = {}
        async with self.deps.uow() as uow:
            for provider_id in {connection.provider_id for _, connection, _ in claimed}:
                try:
                    provider = await uow.providers.get(provider_id)
                    if provider is None:
                        raise Internal(f"provider {provider_id} of claimed connections is gone")
                    providers[provider_id] = (provider, await client_credentials(uow, provider))
                except Exception as exc:
                    # Recorded with each of its connections, which back off.
                    providers[provider_id] = exc

        def refresh(
            lease: Lease, connection: Connection, tokens: Callable[[], TokenSet | None]
        ) -> _Refresh:
            async def load() -> _Loaded:
                found = providers[connection.provider_id]
                if isinstance(found, Exception):
                    raise found
                return connection, tokens(), *found

            return lambda: self._settle(lease, load, calls)

        return [refresh(*claim) for claim in claimed]


def _refresh_outcome(tokens: TokenSet | None, status: str) -> str:
    if tokens is not None:
        return "succeeded"
    return "reauth_required" if status == ConnectionStatus.ATTENTION else "retrying"


def require_active(connection: Connection, provider: Provider, now: datetime) -> None:
    status = connection.status_at(now)
    if status == ConnectionStatus.ATTENTION:
        raise ConnectionReauthRequired(
            f"the connection to {provider.name} needs the user to reconnect: "
            f"{connection.last_error}",
            connection_id=connection.id,
        )
    if status != ConnectionStatus.ACTIVE:
        raise ConnectionNotActive(
            _NOT_ACTIVE.get(status, status), status=status, connection_id=connection.id
        )


async def _load_with_provider(
    connection_id: str, deps: ConnectionDeps
) -> tuple[Connection, Provider]:
    async with deps.uow() as uow:
        connection = await load_connection(uow, connection_id)
        provider = await provider_of(uow, connection)
    return connection, provider


async def _release(
    connection_id: str,
    deps: ConnectionDeps,
    refresher: Refresher | None,
    decide: Decide | None = None,
) -> TokenPayload | None:
    """Hand out the credentials: read the connection, its provider and
    credentials (from the row cache when warm), ask ``decide`` (when given)
    whether they may go out, and record the release durably before they do.
    None when a refresher is given and the token must be refreshed first."""
    now = deps.now()
    snapshot = await release_snapshot(connection_id, deps)
    connection, provider = snapshot.connection, snapshot.provider
    oauth2 = provider.spec.auth_type == AuthType.OAUTH2
    tokens = snapshot.credentials.tokens() if oauth2 else None
    if decide is not None:
        await decide(connection, provider, connection.granted_scopes(tokens))
    # Judged now from what was read: a cached entry never carries a verdict.
    require_active(connection, provider, now)
    if not oauth2:
        payload = static_payload(provider, snapshot.credentials.static_values())
    elif refresher is not None and refresher.due(connection, now):
        return None
    else:
        if tokens is None or tokens.expires_within(now, 0):
            provider.require_endpoints_confirmed()
            raise ProviderUnavailable(
                f"the token expired and {provider.name} could not refresh it: "
                f"{connection.last_error or 'try again'}"
            )
        payload = oauth2_payload(tokens)
    await _record_release(deps, connection, now)
    return payload


async def get_token(
    connection_id: str,
    caller: Principal,
    deps: ConnectionDeps,
    refresher: Refresher,
    policy: PolicyClient,
) -> TokenPayload:
    """Credentials for one connection, once the policy service allows the
    caller; refreshed first when at or near expiry."""
    decide = connection_decision(caller, Action.GET_TOKEN, deps, policy)
    return await release_token(connection_id, deps, refresher, decide)


async def release_token(
    connection_id: str, deps: ConnectionDeps, refresher: Refresher, decide: Decide | None = None
) -> TokenPayload:
    """The connection's credentials; ``decide`` is asked first unless the
    caller was already allowed them (a session's decision covers its token)."""
    # Each release reads, decides and then writes its audit row, so running it
    # again on a fresh connection is safe.
    payload = await retry_stale(lambda: _release(connection_id, deps, refresher, decide))
    if payload is None:
        await refresher.refresh(connection_id, force=False)
        # The refresh read the row: whatever it found (its own new tokens, or
        # another replica's whose notice may still be on its way), the release
        # reads it again rather than the entry cached before.
        deps.cache.invalidate(connection_tag(connection_id))
        payload = await retry_stale(lambda: _release(connection_id, deps, None))
    assert payload is not None
    return payload


async def refresh_connection(
    connection_id: str,
    caller: Principal,
    deps: ConnectionDeps,
    refresher: Refresher,
    policy: PolicyClient,
) -> tuple[Connection, Provider]:
    """Refresh now, once the policy service allows the caller; at most once per
    connection in each window, and never during the provider's backoff."""
    connection, provider, tokens = await authorize_connection(
        caller, Action.REFRESH, connection_id, deps, policy
    )
    now = deps.now()
    require_active(connection, provider, now)
    if provider.spec.auth_type != AuthType.OAUTH2:
        raise RefreshNotSupported(
            f"{provider.name} uses static credentials, which do not refresh",
            connection_id=connection_id,
        )
    if tokens is None or not tokens.refresh_token:
        raise RefreshNotSupported(
            f"{provider.name} issued no refresh token for this connection, so it cannot "
            "be refreshed; its current credentials stay in use",
            connection_id=connection_id,
        )
    try:
        provider.require_endpoints_confirmed()
    except ProviderEndpointsPending as paused:
        await audit_denial(
            deps,
            "refresh.denied",
            f"connections/{connection_id}",
            paused,
            workspace_id=connection.workspace_id,
        )
        raise
    wait = deps.refresh.forced_refresh_wait(connection, now)
    if wait is not None:
        seconds = max(1, round(wait.total_seconds()))
        error = RefreshRateLimited(
            f"the connection to {provider.name} was refreshed moments ago or its provider "
            f"is failing; its token is not refreshed again for {seconds} s",
            connection_id=connection_id,
            retry_after_seconds=str(seconds),
        )
        await audit_denial(
            deps,
            "refresh.denied",
            f"connections/{connection_id}",
            error,
            workspace_id=connection.workspace_id,
        )
        raise error
    async with deps.uow() as uow:
        await uow.audit.add(connection_event("refresh.requested", connection, now))
        await uow.commit()
    await refresher.refresh(connection_id, force=True)
    refreshed, _ = await _load_with_provider(connection_id, deps)
    require_active(refreshed, provider, deps.now())
    if refreshed.refresh_failures:
        raise ProviderUnavailable(
            f"{provider.name} did not refresh the token: {refreshed.last_error}"
        )
    return refreshed, provider


async def _record_release(deps: ConnectionDeps, connection: Connection, now: datetime) -> None:
    """Durable before the credential goes out (group commit): if the row
    cannot be stored, the release fails."""
    await deps.audit.record(connection_event("token.release", connection, now))
