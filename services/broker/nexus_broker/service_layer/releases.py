"""What a release reads: a connection, its sealed credentials and its provider.

A warm release reads them from the row cache (adapters/row_cache.py) and makes
no database round trip; a miss reads them in one transaction, the provider
only when it is not cached itself. Nothing here depends on the time: whether
the connection is usable, expired or due for a refresh is judged by the
caller, per request, from what is returned.
"""

from __future__ import annotations

from dataclasses import dataclass

from nexus_common import ProviderNotFound, ValidationFailed

from ..adapters.connection_repository import SealedConnection, SealedCredentials
from ..adapters.writes import connection_tag, provider_tag
from ..domain.connections import Connection
from ..domain.providers import Provider
from .connections import ConnectionDeps, connection_not_found, provider_of
from .providers import get_provider
from .unit_of_work import BrokerUnitOfWork

__all__ = ["ReleaseSnapshot", "named_provider", "release_snapshot"]


@dataclass(frozen=True)
class ReleaseSnapshot:
    connection: Connection
    provider: Provider
    credentials: SealedCredentials


async def release_snapshot(connection_id: str, deps: ConnectionDeps) -> ReleaseSnapshot:
    if not connection_id:
        raise ValidationFailed("connection_id is required", field="connection_id")
    deps.cache.ensure_started()
    read_with: list[Provider] = []

    async def load() -> SealedConnection:
        async with deps.uow() as uow:
            found = await uow.connections.get_sealed(connection_id)
            if found is None:
                raise connection_not_found(connection_id)
            # In the same transaction: a cold miss is one round trip per row.
            read_with.append(await _provider(found.connection, deps, uow))
        return found

    found = await deps.cache.connections.get(
        connection_id, load, tags=(connection_tag(connection_id),)
    )
    provider = read_with[0] if read_with else await _provider(found.connection, deps, None)
    return ReleaseSnapshot(found.connection, provider, found.credentials)


async def _provider(
    connection: Connection, deps: ConnectionDeps, uow: BrokerUnitOfWork | None
) -> Provider:
    async def load() -> Provider:
        if uow is not None:
            return await provider_of(uow, connection)
        async with deps.uow() as own:
            return await provider_of(own, connection)

    provider_id = connection.provider_id
    return await deps.cache.providers.get(provider_id, load, tags=(provider_tag(provider_id),))


async def named_provider(name: str, deps: ConnectionDeps) -> Provider:
    """The provider a session names, from the row cache when this replica has
    looked the name up before. Names map to ids here; the provider itself is
    cached by id, so its entry is dropped like any other. It is used only if
    it still carries the name, is live and needs no discovery; else it is read
    as ``get_provider`` reads it (live names are unique, so a live provider
    carrying the name is the one the database would return)."""
    cache, registry = deps.cache, deps.registry
    provider_id = cache.provider_ids.get(name)
    if provider_id is not None:
        try:
            provider = await _provider_by_id(provider_id, deps)
        except ProviderNotFound:
            provider = None
        now = registry.clock()
        if (
            provider is not None
            and provider.name == name
            and provider.deleted_at is None
            and not provider.discovery_due(
                now, registry.discovery_retry_seconds, registry.discovery_max_age_seconds
            )
        ):
            return provider
    provider = await get_provider(name, registry)
    cache.remember_name(name, provider.id)
    return provider


async def _provider_by_id(provider_id: str, deps: ConnectionDeps) -> Provider:
    async def load() -> Provider:
        async with deps.uow() as uow:
            found = await uow.providers.get(provider_id)
        if found is None:
            raise ProviderNotFound(f"no provider has the id {provider_id!r}", id=provider_id)
        return found

    deps.cache.ensure_started()
    return await deps.cache.providers.get(provider_id, load, tags=(provider_tag(provider_id),))
