"""Repositories: domain objects in, domain objects out; rows stay here."""

from __future__ import annotations

import uuid
from dataclasses import asdict, fields
from datetime import datetime
from typing import Any

from nexus_common import AuditEvent, Keyring, ProviderAlreadyExists, ResealPage, reseal_column, utc
from sqlalchemy import and_, or_, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..domain.discovery import Discovery
from ..domain.providers import Provider, ProviderSpec
from .orm import audit_events, providers
from .writes import Writes

__all__ = ["AuditRepository", "ProviderQuery", "ProviderRepository", "audit_row"]

_SPEC_COLUMNS = [f.name for f in fields(ProviderSpec) if f.name != "client_secret"]


def _discovery_to_json(discovery: Discovery) -> dict[str, Any]:
    out = asdict(discovery)
    for key in ("fetched_at", "attempted_at"):
        out[key] = out[key].isoformat() if out[key] else None
    return out


def _discovery_from_json(data: dict[str, Any]) -> Discovery:
    values = dict(data)
    for key in ("fetched_at", "attempted_at"):
        values[key] = datetime.fromisoformat(values[key]) if values.get(key) else None
    for key in ("scopes_supported", "token_endpoint_auth_methods_supported"):
        values[key] = tuple(values.get(key, ()))
    return Discovery(**values)


def _secret_aad(provider_id: str) -> bytes:
    return f"providers/{provider_id}/client_secret".encode()


class ProviderQuery:
    """Filters and a keyset position for listing providers, ordered by name."""

    def __init__(
        self,
        *,
        category: str = "",
        auth_type: str = "",
        show_deleted: bool = False,
        after: tuple[str, str] | None = None,
        limit: int = 50,
    ) -> None:
        self.category = category
        self.auth_type = auth_type
        self.show_deleted = show_deleted
        self.after = after
        self.limit = limit


class ProviderRepository:
    """Every write names the provider it touched in ``writes``, so that the
    unit of work can drop it from caches once it commits."""

    def __init__(
        self, session: AsyncSession, keyring: Keyring, writes: Writes | None = None
    ) -> None:
        self._session = session
        self._keyring = keyring
        self._writes = writes if writes is not None else Writes()

    def _to_domain(self, row: Any) -> Provider:
        values = {name: row._mapping[name] for name in _SPEC_COLUMNS}
        values["scopes"] = tuple(values["scopes"])
        return Provider(
            id=row.id,
            spec=ProviderSpec(**values),
            has_client_secret=row.client_secret_sealed is not None,
            discovery=_discovery_from_json(row.discovery),
            created_at=utc(row.created_at),
            updated_at=utc(row.updated_at),
            deleted_at=utc(row.deleted_at),
            endpoints_moved_by=row.endpoints_moved_by,
        )

    def _row_values(self, provider: Provider) -> dict[str, Any]:
        values = {name: getattr(provider.spec, name) for name in _SPEC_COLUMNS}
        values["scopes"] = list(provider.spec.scopes)
        values.update(
            discovery=_discovery_to_json(provider.discovery),
            created_at=provider.created_at,
            updated_at=provider.updated_at,
            deleted_at=provider.deleted_at,
            endpoints_moved_by=provider.endpoints_moved_by,
        )
        return values

    async def _write(self, statement: Any, name: str) -> int:
        # The use case aborts on this error, so its whole unit of work rolls back.
        try:
            result = await self._session.execute(statement)
        except IntegrityError as exc:
            raise ProviderAlreadyExists(
                f"a provider named {name!r} already exists", name=name
            ) from exc
        return int(getattr(result, "rowcount", 0))

    async def add(self, provider: Provider, client_secret: str | None) -> None:
        values = self._row_values(provider)
        values["id"] = provider.id
        values["client_secret_sealed"] = self._seal(provider.id, client_secret)
        self._writes.provider(provider.id)
        await self._write(providers.insert().values(**values), provider.name)

    async def update(
        self, provider: Provider, client_secret: str | None, *, read_at: datetime
    ) -> bool:
        """Store ``provider`` if the row is still as it was read (its ``updated_at``
        equals ``read_at``); False means someone else changed it first. A client
        secret of None keeps the stored one; "" removes it."""
        values = self._row_values(provider)
        if client_secret is not None:
            values["client_secret_sealed"] = self._seal(provider.id, client_secret)
        statement = (
            providers.update()
            .where(providers.c.id == provider.id, providers.c.updated_at == read_at)
            .values(**values)
        )
        self._writes.provider(provider.id)
        return await self._write(statement, provider.name) == 1

    def _seal(self, provider_id: str, client_secret: str | None) -> bytes | None:
        if not client_secret:
            return None
        return self._keyring.seal(client_secret.encode(), _secret_aad(provider_id))

    async def get(self, id_or_name: str) -> Provider | None:
        """By id (live or deleted), else by the name of a live provider."""
        try:
            uuid.UUID(id_or_name)
            condition = providers.c.id == id_or_name
        except ValueError:
            condition = and_(providers.c.name == id_or_name, providers.c.deleted_at.is_(None))
        row = (await self._session.execute(select(providers).where(condition))).first()
        return self._to_domain(row) if row is not None else None

    async def list(self, query: ProviderQuery) -> list[Provider]:
        statement = select(providers).order_by(providers.c.name, providers.c.id)
        if not query.show_deleted:
            statement = statement.where(providers.c.deleted_at.is_(None))
        if query.category:
            statement = statement.where(providers.c.category == query.category)
        if query.auth_type:
            statement = statement.where(providers.c.auth_type == query.auth_type)
        if query.after is not None:
            statement = statement.where(
                tuple_(providers.c.name, providers.c.id) > tuple_(*query.after)
            )
        rows = await self._session.execute(statement.limit(query.limit))
        return [self._to_domain(row) for row in rows]

    async def client_secret(self, provider_id: str) -> str | None:
        sealed = await self._session.scalar(
            select(providers.c.client_secret_sealed).where(providers.c.id == provider_id)
        )
        if sealed is None:
            return None
        return self._keyring.open(sealed, _secret_aad(provider_id)).decode()

    async def reseal(self, after: str | None, limit: int) -> ResealPage:
        self._writes.all()
        return await reseal_column(
            self._session,
            self._keyring,
            providers.c.id,
            providers.c.client_secret_sealed,
            _secret_aad,
            after=after,
            limit=limit,
        )


def audit_row(event: AuditEvent) -> dict[str, Any]:
    return asdict(event.fitted())


class AuditRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, event: AuditEvent) -> None:
        await self._session.execute(audit_events.insert().values(**asdict(event.fitted())))

    async def add_all(self, events: list[AuditEvent]) -> None:
        """A batch in one statement, compiled once whatever its size: the rows
        go as executemany parameters, which psycopg sends in one pipeline."""
        if events:
            await self._session.execute(
                audit_events.insert(), [audit_row(event) for event in events]
            )

    async def add_new(self, events: list[AuditEvent]) -> int:
        """Add the events whose ids are not recorded yet; returns how many."""
        ids = [event.id for event in events]
        known = set(
            await self._session.scalars(select(audit_events.c.id).where(audit_events.c.id.in_(ids)))
        )
        fresh = {event.id: event for event in events if event.id not in known}
        for event in fresh.values():
            await self.add(event)
        return len(fresh)

    async def list(
        self, *, resource: str, before: tuple[datetime, str] | None, limit: int
    ) -> list[AuditEvent]:
        """Newest first; ``before`` resumes after the last event of a page."""
        statement = select(audit_events).order_by(
            audit_events.c.event_time.desc(), audit_events.c.id.desc()
        )
        if resource:
            statement = statement.where(audit_events.c.resource == resource)
        if before is not None:
            time, event_id = before
            statement = statement.where(
                or_(
                    audit_events.c.event_time < time,
                    and_(audit_events.c.event_time == time, audit_events.c.id < event_id),
                )
            )
        rows = await self._session.execute(statement.limit(limit))
        return [AuditEvent.from_row(row) for row in rows]
