"""Storage of connections, their sealed credentials and authorization attempts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from nexus_common import Keyring, ResealPage, reseal_column, utc
from sqlalchemy import and_, bindparam, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..domain.connections import Connection, ConnectionStatus, Lease, TokenSet
from .orm import authorization_attempts, connections, providers
from .writes import Writes

__all__ = [
    "Attempt",
    "AttemptRepository",
    "ConnectionRepository",
    "SealedConnection",
    "SealedCredentials",
]

_COLUMNS = [f.name for f in fields(Connection)]
_TIMES = (
    "created_at",
    "updated_at",
    "pending_until",
    "token_expires_at",
    "last_refreshed_at",
    "next_refresh_at",
    "last_narrowed_at",
)


def _credentials_aad(connection_id: str) -> bytes:
    return f"connections/{connection_id}/credentials".encode()


def _verifier_aad(attempt_id: str) -> bytes:
    return f"authorization_attempts/{attempt_id}/code_verifier".encode()


def _tokens_to_json(tokens: TokenSet) -> dict[str, Any]:
    return {
        "kind": "oauth2",
        "access_token": tokens.access_token,
        "token_type": tokens.token_type,
        "refresh_token": tokens.refresh_token,
        "expires_at": tokens.expires_at.isoformat() if tokens.expires_at else None,
        "scope": list(tokens.scope),
    }


def _tokens_from_json(data: dict[str, Any]) -> TokenSet:
    return TokenSet(
        access_token=data["access_token"],
        token_type=data["token_type"],
        refresh_token=data["refresh_token"],
        expires_at=datetime.fromisoformat(data["expires_at"]) if data["expires_at"] else None,
        scope=tuple(data["scope"]),
    )


@dataclass(frozen=True)
class SealedCredentials:
    """A connection's credentials as stored: sealed, opened only when asked."""

    connection_id: str
    sealed: bytes | None = field(repr=False)
    keyring: Keyring = field(repr=False)

    def _document(self) -> dict[str, Any] | None:
        if self.sealed is None:
            return None
        document: dict[str, Any] = json.loads(
            self.keyring.open(self.sealed, _credentials_aad(self.connection_id))
        )
        return document

    def tokens(self) -> TokenSet | None:
        document = self._document()
        return _tokens_from_json(document) if document and document["kind"] == "oauth2" else None

    def static_values(self) -> dict[str, str]:
        document = self._document()
        return dict(document["values"]) if document and document["kind"] == "static" else {}


@dataclass(frozen=True)
class SealedConnection:
    """A connection and its sealed credentials, read in one statement."""

    connection: Connection
    credentials: SealedCredentials


class ConnectionRepository:
    """Every write names the row it touched in ``writes``, so that the unit of
    work can drop it from caches once it commits. Lease claims, renewals and
    releases are not named: no cache holds the lease (the change notices of
    migration 0007 skip them too)."""

    def __init__(
        self, session: AsyncSession, keyring: Keyring, writes: Writes | None = None
    ) -> None:
        self._session = session
        self._keyring = keyring
        self._writes = writes if writes is not None else Writes()

    @staticmethod
    def _to_domain(row: Any) -> Connection:
        values = {name: row._mapping[name] for name in _COLUMNS}
        for name in _TIMES:
            values[name] = utc(values[name])
        values["scopes"] = tuple(values["scopes"])
        return Connection(**values)

    @staticmethod
    def _values(connection: Connection) -> dict[str, Any]:
        values = {name: getattr(connection, name) for name in _COLUMNS}
        values["scopes"] = list(connection.scopes)
        return values

    def _seal(self, connection_id: str, document: dict[str, Any]) -> bytes:
        return self._keyring.seal(json.dumps(document).encode(), _credentials_aad(connection_id))

    async def add(self, connection: Connection) -> None:
        self._writes.connection(connection.id)
        await self._session.execute(connections.insert().values(**self._values(connection)))

    async def get(self, connection_id: str) -> Connection | None:
        row = (
            await self._session.execute(
                select(connections).where(connections.c.id == connection_id)
            )
        ).first()
        return self._to_domain(row) if row is not None else None

    async def get_sealed(self, connection_id: str) -> SealedConnection | None:
        """The connection with its credentials still sealed: what a release needs."""
        row = (
            await self._session.execute(
                select(connections).where(connections.c.id == connection_id)
            )
        ).first()
        if row is None:
            return None
        credentials = SealedCredentials(connection_id, row.credentials_sealed, self._keyring)
        return SealedConnection(self._to_domain(row), credentials)

    async def save(
        self,
        connection: Connection,
        *,
        read_at: datetime | None = None,
        lease: Lease | None = None,
        tokens: TokenSet | None = None,
        static: dict[str, str] | None = None,
        wipe_credentials: bool = False,
        release: bool = False,
    ) -> bool:
        """Store ``connection`` (and new credentials) if nobody changed it since
        it was read at ``read_at``, or, under a lease, while the row still
        carries that lease's fence; ``release`` gives the lease back in the
        same statement."""
        conditions = [connections.c.id == connection.id]
        if read_at is not None:
            conditions.append(connections.c.updated_at == read_at)
        if lease is not None:
            conditions.append(connections.c.lease_owner == lease.fence)
        assert len(conditions) > 1, "an unconditional write would lose a concurrent one"
        self._writes.connection(connection.id)
        values = self._values(connection)
        if wipe_credentials:
            values["credentials_sealed"] = None
        if release:
            assert lease is not None, "only a lease's holder releases it"
            values["lease_until"] = values["lease_owner"] = None
        if tokens is not None:
            values["credentials_sealed"] = self._seal(connection.id, _tokens_to_json(tokens))
        if static is not None:
            values["credentials_sealed"] = self._seal(
                connection.id, {"kind": "static", "values": static}
            )
        result = await self._session.execute(
            update(connections).where(*conditions).values(**values)
        )
        return int(getattr(result, "rowcount", 0)) == 1

    async def save_leased(
        self, outcomes: list[tuple[Connection, Lease, TokenSet | None]]
    ) -> list[bool] | None:
        """Store each connection (and its new tokens, when given) and release
        its lease, only where the row still carries that lease's fence; which
        were stored. The rows are read, and on PostgreSQL locked, first, and
        then written by two statements run over all of them. None when a row
        changed between the read and the write (SQLite has no row locks):
        the caller rolls back and stores them one by one."""
        rows = await self._session.execute(
            select(connections.c.id, connections.c.lease_owner)
            .where(connections.c.id.in_([c.id for c, _, _ in outcomes]))
            .with_for_update()
        )
        fences = {row.id: row.lease_owner for row in rows}
        stored = [fences.get(c.id) == lease.fence for c, lease, _ in outcomes]
        with_tokens: list[dict[str, Any]] = []
        without_tokens: list[dict[str, Any]] = []
        for (connection, lease, tokens), held in zip(outcomes, stored, strict=True):
            if not held:
                continue
            self._writes.connection(connection.id)
            values = {**self._values(connection), "b_id": connection.id, "b_fence": lease.fence}
            del values["id"]
            if tokens is None:
                without_tokens.append(values)
            else:
                values["credentials_sealed"] = self._seal(connection.id, _tokens_to_json(tokens))
                with_tokens.append(values)
        for changes in (with_tokens, without_tokens):
            if not changes:
                continue
            result = await self._session.execute(
                update(connections)
                .where(
                    connections.c.id == bindparam("b_id"),
                    connections.c.lease_owner == bindparam("b_fence"),
                )
                .values(lease_until=None, lease_owner=None),
                changes,
            )
            if int(getattr(result, "rowcount", -1)) != len(changes):
                return None
        return stored

    async def _credentials(self, connection_id: str) -> SealedCredentials:
        sealed = await self._session.scalar(
            select(connections.c.credentials_sealed).where(connections.c.id == connection_id)
        )
        return SealedCredentials(connection_id, sealed, self._keyring)

    async def tokens(self, connection_id: str) -> TokenSet | None:
        return (await self._credentials(connection_id)).tokens()

    async def static_credentials(self, connection_id: str) -> dict[str, str]:
        return (await self._credentials(connection_id)).static_values()

    async def list_for_workspace(
        self, workspace_id: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[Connection]:
        statement = (
            select(connections)
            .where(connections.c.workspace_id == workspace_id)
            .order_by(connections.c.created_at, connections.c.id)
            .limit(limit)
        )
        if after is not None:
            created, connection_id = after
            statement = statement.where(
                or_(
                    connections.c.created_at > created,
                    and_(connections.c.created_at == created, connections.c.id > connection_id),
                )
            )
        return [self._to_domain(row) for row in await self._session.execute(statement)]

    async def unconfirmed_past(self, now: datetime, limit: int) -> list[str]:
        """Unconfirmed connections whose time to be confirmed has run out."""
        statement = (
            select(connections.c.id)
            .where(
                connections.c.status == ConnectionStatus.UNCONFIRMED,
                connections.c.pending_until <= now,
            )
            .order_by(connections.c.pending_until)
            .limit(limit)
        )
        return list((await self._session.scalars(statement)).all())

    async def usable_for(
        self, provider_id: str, workspaces: frozenset[str] | None, tenant_id: str | None, limit: int
    ) -> list[Connection]:
        """Connections to a provider that could back a session, in these
        workspaces (None: in any) of this tenant or of none (None: any tenant):
        active ones, and those waiting for the user to reconnect."""
        statement = (
            select(connections)
            .where(
                connections.c.provider_id == provider_id,
                connections.c.status.in_([ConnectionStatus.ACTIVE, ConnectionStatus.ATTENTION]),
            )
            .order_by(connections.c.created_at, connections.c.id)
            .limit(limit)
        )
        if workspaces is not None:
            statement = statement.where(connections.c.workspace_id.in_(sorted(workspaces)))
        if tenant_id is not None:
            statement = statement.where(connections.c.tenant_id.in_(["", tenant_id]))
        return [self._to_domain(row) for row in await self._session.execute(statement)]

    async def reseal(self, after: str | None, limit: int) -> ResealPage:
        self._writes.all()
        return await reseal_column(
            self._session,
            self._keyring,
            connections.c.id,
            connections.c.credentials_sealed,
            _credentials_aad,
            after=after,
            limit=limit,
        )

    async def delete(self, connection_id: str) -> bool:
        self._writes.connection(connection_id)
        result = await self._session.execute(
            delete(connections).where(connections.c.id == connection_id)
        )
        return int(getattr(result, "rowcount", 0)) == 1

    async def note_narrowing(self, lease: Lease, now: datetime) -> bool:
        """Record a refresh grant for a narrowed token, while ``lease`` holds;
        nothing else of the row is written."""
        self._writes.connection(lease.connection_id)
        result = await self._session.execute(
            update(connections)
            .where(connections.c.id == lease.connection_id)
            .where(connections.c.lease_owner == lease.fence)
            .values(last_narrowed_at=now)
        )
        return int(getattr(result, "rowcount", 0)) == 1

    async def any_live(self, provider_id: str, now: datetime) -> bool:
        """Whether some connection of the provider holds credentials, or waits
        for its authorization code."""
        found = await self._session.execute(
            select(connections.c.id)
            .where(connections.c.provider_id == provider_id)
            .where(
                or_(
                    connections.c.credentials_sealed.is_not(None),
                    and_(
                        connections.c.status == ConnectionStatus.PENDING,
                        connections.c.pending_until > now,
                    ),
                )
            )
            .limit(1)
        )
        return found.first() is not None

    async def claim_due(
        self, now: datetime, until: datetime, fence: str, limit: int
    ) -> list[tuple[Connection, Callable[[], TokenSet | None]]]:
        """Take the refresh lease of up to ``limit`` connections in one
        statement, under one fence: active ones whose refresh time has come
        and that nobody holds, soonest first. On PostgreSQL the rows are
        locked with SKIP LOCKED, so replicas claiming at once each get
        different rows. Each comes with a function that opens its tokens,
        called by whoever refreshes it: a row this replica cannot open (a key
        it lacks) fails that refresh alone, not the claim."""
        free = or_(connections.c.lease_until.is_(None), connections.c.lease_until < now)
        due = (
            select(connections.c.id)
            .where(connections.c.status == ConnectionStatus.ACTIVE)
            .where(connections.c.next_refresh_at <= now, free)
            # Their provider's moved token endpoints await confirmation.
            .where(
                connections.c.provider_id.not_in(
                    select(providers.c.id).where(providers.c.endpoints_moved_by.is_not(None))
                )
            )
            .order_by(connections.c.next_refresh_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        statement = (
            update(connections)
            .where(connections.c.id.in_(due), free)
            .values(lease_until=until, lease_owner=fence)
            .returning(connections)
        )
        claimed = []
        for row in await self._session.execute(statement):
            connection = self._to_domain(row)
            claimed.append((connection, self._tokens_opener(connection.id, row.credentials_sealed)))
        return claimed

    def _tokens_opener(
        self, connection_id: str, sealed: bytes | None
    ) -> Callable[[], TokenSet | None]:
        return SealedCredentials(connection_id, sealed, self._keyring).tokens

    async def claim(self, lease: Lease, now: datetime) -> bool:
        """Take the refresh lease unless someone holds an unexpired one."""
        result = await self._session.execute(
            update(connections)
            .where(
                connections.c.id == lease.connection_id,
                or_(connections.c.lease_until.is_(None), connections.c.lease_until < now),
            )
            .values(lease_until=lease.until, lease_owner=lease.fence)
        )
        return int(getattr(result, "rowcount", 0)) == 1

    async def renew(self, lease: Lease, until: datetime) -> bool:
        """Extend a lease; False once another claim has replaced its fence.
        A lapsed lease nobody claimed since is still this holder's to extend."""
        result = await self._session.execute(
            update(connections)
            .where(
                connections.c.id == lease.connection_id,
                connections.c.lease_owner == lease.fence,
            )
            .values(lease_until=until)
        )
        return int(getattr(result, "rowcount", 0)) == 1

    async def release(self, lease: Lease) -> None:
        await self._session.execute(
            update(connections)
            .where(
                connections.c.id == lease.connection_id,
                connections.c.lease_owner == lease.fence,
            )
            .values(lease_until=None, lease_owner=None)
        )


@dataclass(frozen=True)
class Attempt:
    """One trip to the provider (or the capture page) for a connection."""

    id: str
    connection_id: str
    code_verifier: str | None = field(repr=False)
    nonce: str | None = field(repr=False)
    expires_at: datetime
    used_at: datetime | None
    redirect_uri: str | None = None
    authorization_url: str | None = None
    binding_hash: str | None = None
    capture_checks: int = 0
    confirmation_required: bool = False
    confirmation_hash: str | None = None


class AttemptRepository:
    def __init__(self, session: AsyncSession, keyring: Keyring) -> None:
        self._session = session
        self._keyring = keyring

    async def add(self, attempt: Attempt) -> None:
        sealed = (
            self._keyring.seal(attempt.code_verifier.encode(), _verifier_aad(attempt.id))
            if attempt.code_verifier
            else None
        )
        await self._session.execute(
            authorization_attempts.insert().values(
                id=attempt.id,
                connection_id=attempt.connection_id,
                code_verifier_sealed=sealed,
                nonce=attempt.nonce,
                expires_at=attempt.expires_at,
                used_at=attempt.used_at,
                redirect_uri=attempt.redirect_uri,
                authorization_url=attempt.authorization_url,
                binding_hash=attempt.binding_hash,
                capture_checks=attempt.capture_checks,
                confirmation_required=attempt.confirmation_required,
                confirmation_hash=attempt.confirmation_hash,
            )
        )

    async def get(self, attempt_id: str) -> Attempt | None:
        return await self._one(authorization_attempts.c.id == attempt_id)

    async def of_connection(self, connection_id: str) -> Attempt | None:
        """The attempt a connection was started with (each has exactly one)."""
        return await self._one(authorization_attempts.c.connection_id == connection_id)

    async def _one(self, condition: Any) -> Attempt | None:
        row = (await self._session.execute(select(authorization_attempts).where(condition))).first()
        if row is None:
            return None
        verifier = (
            self._keyring.open(row.code_verifier_sealed, _verifier_aad(row.id)).decode()
            if row.code_verifier_sealed is not None
            else None
        )
        expires_at = utc(row.expires_at)
        assert expires_at is not None
        return Attempt(
            row.id,
            row.connection_id,
            verifier,
            row.nonce,
            expires_at,
            utc(row.used_at),
            row.redirect_uri,
            row.authorization_url,
            row.binding_hash,
            row.capture_checks,
            row.confirmation_required,
            row.confirmation_hash,
        )

    async def bind(self, attempt_id: str, binding_hash: str) -> bool:
        """Bind an unused attempt to a browser; False when one is bound already."""
        result = await self._session.execute(
            update(authorization_attempts)
            .where(
                authorization_attempts.c.id == attempt_id,
                authorization_attempts.c.used_at.is_(None),
                authorization_attempts.c.binding_hash.is_(None),
            )
            .values(binding_hash=binding_hash)
        )
        return int(getattr(result, "rowcount", 0)) == 1

    async def spend_check(self, attempt_id: str, limit: int) -> int | None:
        """Take one live credential check of an unused attempt; the number it
        is, or None when all ``limit`` are spent. One UPDATE, so concurrent
        submits cannot take more than ``limit`` between them."""
        spent: int | None = await self._session.scalar(
            update(authorization_attempts)
            .where(
                authorization_attempts.c.id == attempt_id,
                authorization_attempts.c.used_at.is_(None),
                authorization_attempts.c.capture_checks < limit,
            )
            .values(capture_checks=authorization_attempts.c.capture_checks + 1)
            .returning(authorization_attempts.c.capture_checks)
        )
        return spent

    async def reseal(self, after: str | None, limit: int) -> ResealPage:
        return await reseal_column(
            self._session,
            self._keyring,
            authorization_attempts.c.id,
            authorization_attempts.c.code_verifier_sealed,
            _verifier_aad,
            after=after,
            limit=limit,
        )

    async def set_confirmation(self, attempt_id: str, confirmation_hash: str) -> None:
        await self._session.execute(
            update(authorization_attempts)
            .where(authorization_attempts.c.id == attempt_id)
            .values(confirmation_hash=confirmation_hash)
        )

    async def use_confirmation(self, attempt_id: str, confirmation_hash: str) -> bool:
        """Clear the confirmation code; False when it was used (or changed) meanwhile."""
        result = await self._session.execute(
            update(authorization_attempts)
            .where(
                authorization_attempts.c.id == attempt_id,
                authorization_attempts.c.confirmation_hash == confirmation_hash,
            )
            .values(confirmation_hash=None)
        )
        return int(getattr(result, "rowcount", 0)) == 1

    async def consume(self, attempt_id: str, now: datetime) -> bool:
        """Mark the attempt used; False when it already was (a replay)."""
        result = await self._session.execute(
            update(authorization_attempts)
            .where(
                authorization_attempts.c.id == attempt_id,
                authorization_attempts.c.used_at.is_(None),
            )
            .values(used_at=now)
        )
        return int(getattr(result, "rowcount", 0)) == 1
