"""Provider registry use cases: one function per use case."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from nexus_common import (
    AuditEvent,
    ConcurrentModification,
    ConfirmationNeedsAnotherAdmin,
    DiscoveryDocumentInvalid,
    OutboundAddressNotAllowed,
    OutboundPolicy,
    PageTokens,
    ProviderDeleted,
    ProviderNotFound,
    ResealPage,
    ValidationFailed,
    current_actor,
    page_size,
)

from ..adapters.oidc_discovery import DiscoveryClient, IssuerUnreachable
from ..adapters.repository import ProviderQuery
from ..domain.discovery import Discovery, DiscoveryStatus, parse_discovery_document
from ..domain.providers import (
    AUTH_TYPES,
    DISCOVERY,
    SETTABLE_FIELDS,
    TOKEN_ENDPOINTS,
    Provider,
    ProviderSpec,
    check_secret_follows_endpoints,
    endpoint_changes,
    token_endpoint_moves,
    validate_spec,
)
from .endpoints import check_discovered_endpoints, check_spec_endpoints
from .unit_of_work import BrokerUnitOfWork

__all__ = [
    "ProviderPage",
    "RegistryDeps",
    "confirm_endpoints",
    "create_provider",
    "delete_provider",
    "get_provider",
    "list_providers",
    "providers_by_auth_type",
    "reseal_secrets",
    "update_provider",
]


@dataclass(frozen=True)
class RegistryDeps:
    uow: Callable[[], BrokerUnitOfWork]
    discovery: DiscoveryClient
    clock: Callable[[], datetime]
    discovery_retry_seconds: float
    discovery_max_age_seconds: float
    pages: PageTokens
    outbound: OutboundPolicy
    # NEXUS_ENDPOINT_CONFIRMATION=another_admin: whoever moved a provider's
    # token endpoints cannot confirm the move too.
    confirm_by_another_admin: bool = False


@dataclass(frozen=True)
class ProviderPage:
    providers: list[Provider]
    next_page_token: str


def _resource(provider: Provider) -> str:
    return f"providers/{provider.id}"


def _audit_view(spec: ProviderSpec) -> dict[str, Any]:
    # The secret itself is never recorded, only whether one was written.
    view = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in vars(spec).items()
        if k != "client_secret" and v not in ("", (), {})
    }
    view["client_secret_set"] = bool(spec.client_secret)
    return view


async def _discover(spec: ProviderSpec, now: datetime, deps: RegistryDeps) -> Discovery:
    if not spec.enable_discovery:
        return Discovery()
    try:
        document = await deps.discovery.fetch(spec.issuer)
    except IssuerUnreachable as exc:
        return Discovery.pending(
            f"{exc.reason}; discovery will be retried when the provider is next used", now
        )
    discovery = parse_discovery_document(spec.issuer, document, now)
    await check_discovered_endpoints(discovery, deps.outbound)
    return discovery


async def create_provider(spec: ProviderSpec, deps: RegistryDeps) -> Provider:
    spec = validate_spec(spec, has_secret=bool(spec.client_secret))
    await check_spec_endpoints(spec, deps.outbound)
    now = deps.clock()
    # Discovery runs before the transaction so no row lock waits on the network.
    discovery = await _discover(spec, now, deps)
    provider = Provider(
        id=str(uuid.uuid4()),
        spec=replace(spec, client_secret=None),
        has_client_secret=bool(spec.client_secret),
        discovery=discovery,
        created_at=now,
        updated_at=now,
    )
    async with deps.uow() as uow:
        await uow.providers.add(provider, spec.client_secret)
        await uow.audit.add(
            AuditEvent.record("provider.create", _resource(provider), now, **_audit_view(spec))
        )
        await uow.commit()
    return provider


async def _load(uow: BrokerUnitOfWork, id_or_name: str) -> Provider:
    if not id_or_name:
        raise ValidationFailed("id is required: a provider id or name", field="id")
    provider = await uow.providers.get(id_or_name)
    if provider is None:
        raise ProviderNotFound(f"no provider has the id or name {id_or_name!r}", id=id_or_name)
    return provider


def _changed_meanwhile(provider: Provider) -> ConcurrentModification:
    return ConcurrentModification(
        f"provider {provider.name!r} was changed by another request; read it again and retry",
        id=provider.id,
    )


async def get_provider(id_or_name: str, deps: RegistryDeps) -> Provider:
    """Read a provider; a due discovery (pending, or stale) is retried first."""
    async with deps.uow() as uow:
        provider = await _load(uow, id_or_name)
    now = deps.clock()
    if provider.deleted_at or not provider.discovery_due(
        now, deps.discovery_retry_seconds, deps.discovery_max_age_seconds
    ):
        return provider
    try:
        discovery = await _discover(provider.spec, now, deps)
    except (DiscoveryDocumentInvalid, OutboundAddressNotAllowed) as exc:
        # Reading must not fail because the issuer misbehaves now; say so instead.
        discovery = Discovery.pending(f"{exc.message}; discovery will be retried", now)
    if discovery.status != DiscoveryStatus.COMPLETE and provider.discovery.is_complete:
        # A failed re-fetch keeps the last good document rather than breaking the provider.
        return provider
    refreshed = replace(provider, discovery=discovery)
    async with deps.uow() as uow:
        # A re-fetch that moves a token endpoint is an endpoint change like an update's.
        moved = token_endpoint_moves(provider, refreshed)
        refreshed = await _hold_moved_endpoints(uow, provider, refreshed, moved, now, DISCOVERY)
        # If an admin changed the provider meanwhile, their version wins.
        if not await uow.providers.update(refreshed, None, read_at=provider.updated_at):
            return await _load(uow, provider.id)
        if moved:
            await uow.audit.add(
                _endpoint_change(provider, refreshed, now, source="discovery", given=False)
            )
        await uow.commit()
    return refreshed


async def _hold_moved_endpoints(
    uow: BrokerUnitOfWork,
    current: Provider,
    updated: Provider,
    moved: list[str],
    now: datetime,
    mover: str,
) -> Provider:
    """Moved token endpoints of a provider whose connections hold tokens (or
    wait for a code) wait for confirmation: whoever may change a provider must
    not thereby be able to send every refresh token, or an authorization code
    with its PKCE verifier, to a host of their choosing."""
    if moved and (current.endpoints_pending or await uow.connections.any_live(current.id, now)):
        return replace(updated, endpoints_moved_by=mover)
    return updated


async def list_providers(
    *,
    category: str,
    auth_type: str,
    show_deleted: bool,
    requested_size: int,
    page_token: str,
    deps: RegistryDeps,
) -> ProviderPage:
    if auth_type and auth_type not in AUTH_TYPES:
        raise ValidationFailed(
            f"auth_type must be one of {', '.join(AUTH_TYPES)}", field="auth_type"
        )
    filters = {"category": category, "auth_type": auth_type, "show_deleted": show_deleted}
    after = deps.pages.decode(page_token, filters)
    limit = page_size(requested_size)
    async with deps.uow() as uow:
        found = await uow.providers.list(
            ProviderQuery(
                category=category,
                auth_type=auth_type,
                show_deleted=show_deleted,
                after=(after[0], after[1]) if after else None,
                limit=limit + 1,
            )
        )
    page, more = found[:limit], len(found) > limit
    token = deps.pages.encode([page[-1].name, page[-1].id], filters) if more else ""
    return ProviderPage(page, token)


def _changed_fields(patch: ProviderSpec, mask: Iterable[str]) -> set[str]:
    paths = set(mask)
    if not paths:
        # Without a mask, every field given a non-default value changes (AIP-134).
        defaults = ProviderSpec()
        return {f for f in SETTABLE_FIELDS if getattr(patch, f) != getattr(defaults, f)}
    unknown = paths - SETTABLE_FIELDS
    if unknown:
        raise ValidationFailed(
            f"update_mask names fields that cannot be updated: {', '.join(sorted(unknown))}",
            field="update_mask",
        )
    return paths


async def update_provider(
    id_or_name: str, patch: ProviderSpec, mask: Iterable[str], deps: RegistryDeps
) -> Provider:
    changed = _changed_fields(patch, mask)
    async with deps.uow() as uow:
        current = await _load(uow, id_or_name)
    if current.deleted_at:
        raise ProviderDeleted(f"provider {current.name!r} is deleted and cannot be changed")
    if "auth_type" in changed and patch.auth_type != current.spec.auth_type:
        raise ValidationFailed(
            "auth_type cannot be changed; create a new provider", field="auth_type"
        )
    merged = replace(current.spec, **{f: getattr(patch, f) for f in changed})
    has_secret = (
        bool(patch.client_secret) if "client_secret" in changed else current.has_client_secret
    )
    merged = validate_spec(merged, has_secret=has_secret)
    moved = endpoint_changes(current.spec, merged)
    # Checked before discovery, so a refused change reaches out to no new host.
    check_secret_follows_endpoints(current, moved, secret_given="client_secret" in changed)
    await check_spec_endpoints(merged, deps.outbound, changed)
    now = deps.clock()
    discovery = current.discovery
    if {"issuer", "enable_discovery"} & changed:
        discovery = await _discover(merged, now, deps)
    # An update with a mask but no secret path keeps the stored secret (None).
    secret = (patch.client_secret or "") if "client_secret" in changed else None
    updated = replace(
        current,
        spec=replace(merged, client_secret=None),
        has_client_secret=has_secret,
        discovery=discovery,
        updated_at=now,
    )
    async with deps.uow() as uow:
        updated = await _hold_moved_endpoints(
            uow, current, updated, token_endpoint_moves(current, updated), now, current_actor()
        )
        if not await uow.providers.update(updated, secret, read_at=current.updated_at):
            raise _changed_meanwhile(current)
        await uow.audit.add(
            AuditEvent.record(
                "provider.update",
                _resource(updated),
                now,
                fields=sorted(changed),
                **_audit_view(patch),
            )
        )
        if moved or token_endpoint_moves(current, updated):
            await uow.audit.add(
                _endpoint_change(
                    current, updated, now, source="update", given="client_secret" in changed
                )
            )
        await uow.commit()
    return updated


def _endpoint_change(
    current: Provider, updated: Provider, now: datetime, *, source: str, given: bool
) -> AuditEvent:
    before, after = current.endpoints(), updated.endpoints()
    return AuditEvent.record(
        "provider.endpoint_change",
        _resource(updated),
        now,
        name=updated.name,
        source=source,
        endpoints={
            name: {"old": before[name], "new": after[name]}
            for name in before
            if before[name] != after[name]
            or getattr(current.spec, name) != getattr(updated.spec, name)
        },
        # Whether the request gave a client secret; never the secret itself.
        client_secret_given=given,
        endpoints_pending=updated.endpoints_pending,
    )


async def confirm_endpoints(id_or_name: str, deps: RegistryDeps) -> Provider:
    """The second step of an endpoint move: from now on refreshes, code
    exchanges and revocations go to the provider's current endpoints."""
    now = deps.clock()
    async with deps.uow() as uow:
        provider = await _load(uow, id_or_name)
        if provider.deleted_at:
            raise ProviderDeleted(f"provider {provider.name!r} is deleted and cannot be changed")
        if not provider.endpoints_pending:
            return provider
        if deps.confirm_by_another_admin and provider.endpoints_moved_by == current_actor():
            raise ConfirmationNeedsAnotherAdmin(
                f"the token endpoints of provider {provider.name!r} were moved with this "
                "admin key; another admin key must confirm the move "
                "(NEXUS_ENDPOINT_CONFIRMATION=another_admin)",
                id=provider.id,
            )
        confirmed = replace(provider, endpoints_moved_by=None, updated_at=now)
        if not await uow.providers.update(confirmed, None, read_at=provider.updated_at):
            raise _changed_meanwhile(provider)
        await uow.audit.add(
            AuditEvent.record(
                "provider.endpoints_confirm",
                _resource(confirmed),
                now,
                name=confirmed.name,
                moved_by=provider.endpoints_moved_by,
                # What the connections' tokens go to from now on.
                endpoints={name: confirmed.endpoints()[name] for name in TOKEN_ENDPOINTS},
            )
        )
        await uow.commit()
    return confirmed


async def delete_provider(id_or_name: str, deps: RegistryDeps) -> Provider:
    now = deps.clock()
    async with deps.uow() as uow:
        provider = await _load(uow, id_or_name)
        if provider.deleted_at:
            raise ProviderNotFound(f"provider {provider.name!r} is already deleted", id=id_or_name)
        deleted = replace(provider, deleted_at=now, updated_at=now)
        if not await uow.providers.update(deleted, None, read_at=provider.updated_at):
            raise _changed_meanwhile(provider)
        await uow.audit.add(
            AuditEvent.record("provider.delete", _resource(deleted), now, name=deleted.name)
        )
        await uow.commit()
    return deleted


async def providers_by_auth_type(deps: RegistryDeps) -> dict[str, list[Provider]]:
    """Every live provider, grouped by auth type in a stable order."""
    grouped: dict[str, list[Provider]] = {auth_type: [] for auth_type in AUTH_TYPES}
    async with deps.uow() as uow:
        after: tuple[str, str] | None = None
        while True:
            batch = await uow.providers.list(ProviderQuery(after=after, limit=500))
            for provider in batch:
                grouped[provider.spec.auth_type].append(provider)
            if len(batch) < 500:
                return grouped
            after = (batch[-1].name, batch[-1].id)


# Rows one re-seal transaction rewrites: its row locks last that long.
_RESEAL_BATCH = 100

_SEALED_COLUMNS: tuple[Callable[[BrokerUnitOfWork, str | None], Awaitable[ResealPage]], ...] = (
    lambda work, after: work.providers.reseal(after, _RESEAL_BATCH),
    lambda work, after: work.connections.reseal(after, _RESEAL_BATCH),
    lambda work, after: work.attempts.reseal(after, _RESEAL_BATCH),
    lambda work, after: work.signing_keys.reseal(after, _RESEAL_BATCH),
    lambda work, after: work.narrowed.reseal(after, _RESEAL_BATCH),
)


async def reseal_secrets(uow: Callable[[], BrokerUnitOfWork], now: datetime) -> int:
    """After the keyring's primary key changed: move every stored secret onto
    it, a batch of rows per transaction, while refreshes go on (each row is
    swapped only if unchanged since read, see ``reseal_column``)."""
    count = 0
    for reseal in _SEALED_COLUMNS:
        after: str | None = None
        while True:
            async with uow() as work:
                page = await reseal(work, after)
                await work.commit()
            count += page.resealed
            if page.last is None:
                break
            after = page.last
    async with uow() as work:
        await work.audit.add(AuditEvent.record("keyring.reseal", "vault", now, resealed=count))
        await work.commit()
    return count
