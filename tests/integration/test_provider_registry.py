"""The provider registry over gRPC, through the gateway, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import field_mask_pb2, struct_pb2
from nexus.broker.v1 import audit_pb2, providers_pb2, providers_pb2_grpc
from nexus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from nexus_common import Keyring

from tests.conftest import INTERNAL_TOKEN, Services
from tests.integration.helpers import ADMIN, expect_error, peek
from tests.support.oidc_server import OidcServer, start_oidc_server
from tools.devstack import free_port

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def salesforce(**changes: object) -> providers_pb2.Provider:
    provider = providers_pb2.Provider(
        name="salesforce",
        auth_type="oauth2",
        client_id="SF_CLIENT_ID",
        client_secret="SF_CLIENT_SECRET",
        auth_url="https://login.salesforce.com/services/oauth2/authorize",
        token_url="https://login.salesforce.com/services/oauth2/token",
        scopes=["crm:contacts:read", "crm:contacts:write"],
        category="crm",
    )
    provider.params.update({"skip_scope_on_exchange": True})
    for key, value in changes.items():
        if isinstance(value, list):
            provider.ClearField(key)  # type: ignore[arg-type]
            getattr(provider, key).extend(value)
        else:
            setattr(provider, key, value)
    return provider


def api_key_provider(name: str, category: str = "weather") -> providers_pb2.Provider:
    params = struct_pb2.Struct()
    params.update(
        {"credential_schema": {"fields": [{"name": "api_key", "in": "query", "key": "appid"}]}}
    )
    return providers_pb2.Provider(name=name, auth_type="api_key", category=category, params=params)


def stubs(
    services: Services,
) -> tuple[gateway_pb2_grpc.ProviderServiceStub, gateway_pb2_grpc.AuditServiceStub]:
    return (
        gateway_pb2_grpc.ProviderServiceStub(services.gateway),
        gateway_pb2_grpc.AuditServiceStub(services.gateway),
    )


async def create(services: Services, provider: providers_pb2.Provider) -> providers_pb2.Provider:
    registry, _ = stubs(services)
    return await registry.CreateProvider(
        gateway_pb2.CreateProviderRequest(provider=provider), metadata=ADMIN
    )


async def update(
    services: Services, id_or_name: str, provider: providers_pb2.Provider, *paths: str
) -> providers_pb2.Provider:
    registry, _ = stubs(services)
    return await registry.UpdateProvider(
        gateway_pb2.UpdateProviderRequest(
            id=id_or_name, provider=provider, update_mask=field_mask_pb2.FieldMask(paths=paths)
        ),
        metadata=ADMIN,
    )


async def count_rows(services: Services) -> tuple[int, int]:
    engine = peek(services.env["NEXUS_BROKER_DATABASE_URL"])
    try:
        with engine.connect() as connection:
            providers = connection.scalar(sa.text("SELECT count(*) FROM providers"))
            events = connection.scalar(sa.text("SELECT count(*) FROM audit_events"))
    finally:
        engine.dispose()
    return int(providers or 0), int(events or 0)


async def test_registration_returns_the_provider_and_id_but_never_the_secret(
    services: Services,
) -> None:
    created = await create(services, salesforce())
    assert created.id and created.name == "salesforce"
    assert not created.HasField("client_secret")
    assert created.has_client_secret
    assert created.state == "active"
    assert created.discovery.status == "disabled"
    assert dict(created.params) == {"skip_scope_on_exchange": True}
    registry, _ = stubs(services)
    for key in (created.id, "salesforce"):
        fetched = await registry.GetProvider(
            providers_pb2.GetProviderRequest(id=key), metadata=ADMIN
        )
        assert fetched == created


async def test_client_secret_is_sealed_at_rest_and_bound_to_its_row(services: Services) -> None:
    created = await create(services, salesforce())
    engine = peek(services.env["NEXUS_BROKER_DATABASE_URL"])
    with engine.connect() as connection:
        sealed = connection.scalar(sa.text("SELECT client_secret_sealed FROM providers"))
    engine.dispose()
    assert b"SF_CLIENT_SECRET" not in bytes(sealed)
    keyring = Keyring.from_spec(services.env["NEXUS_KEYRING"])
    aad = f"providers/{created.id}/client_secret".encode()
    assert keyring.open(bytes(sealed), aad) == b"SF_CLIENT_SECRET"


async def test_list_pages_and_filters(services: Services) -> None:
    await create(services, salesforce())
    for name in ("weather-a", "weather-b", "weather-c"):
        await create(services, api_key_provider(name))
    registry, _ = stubs(services)
    seen: list[str] = []
    token = ""
    while True:
        page = await registry.ListProviders(
            providers_pb2.ListProvidersRequest(page_size=2, page_token=token, auth_type="api_key"),
            metadata=ADMIN,
        )
        seen += [p.name for p in page.providers]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["weather-a", "weather-b", "weather-c"]
    crm = await registry.ListProviders(
        providers_pb2.ListProvidersRequest(category="crm"), metadata=ADMIN
    )
    assert [p.name for p in crm.providers] == ["salesforce"]
    await expect_error(
        registry.ListProviders(
            providers_pb2.ListProvidersRequest(page_token="nope"), metadata=ADMIN
        ),
        INVALID,
        "INVALID_PAGE_TOKEN",
    )
    await expect_error(
        registry.ListProviders(
            providers_pb2.ListProvidersRequest(auth_type="saml"), metadata=ADMIN
        ),
        INVALID,
        "VALIDATION_FAILED",
    )


async def test_update_changes_only_masked_fields_and_keeps_the_secret(services: Services) -> None:
    created = await create(services, salesforce())
    updated = await update(
        services,
        "salesforce",
        providers_pb2.Provider(description="CRM", category="ignored-not-in-mask"),
        "description",
    )
    assert updated.description == "CRM" and updated.category == "crm"
    assert updated.has_client_secret and updated.create_time == created.create_time
    await expect_error(
        update(services, created.id, providers_pb2.Provider(auth_type="api_key"), "auth_type"),
        INVALID,
        "VALIDATION_FAILED",
    )
    await expect_error(
        update(services, created.id, providers_pb2.Provider(), "id"),
        INVALID,
        "VALIDATION_FAILED",
    )
    # Removing the secret of a confidential client would break it, so it is refused.
    await expect_error(
        update(services, created.id, providers_pb2.Provider(client_secret=""), "client_secret"),
        INVALID,
        "VALIDATION_FAILED",
    )


async def test_delete_is_soft_and_frees_the_name(services: Services) -> None:
    created = await create(services, salesforce())
    registry, _ = stubs(services)
    deleted = await registry.DeleteProvider(
        providers_pb2.DeleteProviderRequest(id="salesforce"), metadata=ADMIN
    )
    assert deleted.state == "deleted" and deleted.HasField("delete_time")
    by_id = await registry.GetProvider(
        providers_pb2.GetProviderRequest(id=created.id), metadata=ADMIN
    )
    assert by_id.state == "deleted"
    await expect_error(
        registry.GetProvider(providers_pb2.GetProviderRequest(id="salesforce"), metadata=ADMIN),
        grpc.StatusCode.NOT_FOUND,
        "PROVIDER_NOT_FOUND",
    )
    await expect_error(
        update(services, created.id, providers_pb2.Provider(description="x")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROVIDER_DELETED",
    )
    await expect_error(
        registry.DeleteProvider(providers_pb2.DeleteProviderRequest(id=created.id), metadata=ADMIN),
        grpc.StatusCode.NOT_FOUND,
        "PROVIDER_NOT_FOUND",
    )
    listed = await registry.ListProviders(providers_pb2.ListProvidersRequest(), metadata=ADMIN)
    assert list(listed.providers) == []
    everything = await registry.ListProviders(
        providers_pb2.ListProvidersRequest(show_deleted=True), metadata=ADMIN
    )
    assert [p.id for p in everything.providers] == [created.id]
    again = await create(services, salesforce())
    assert again.id != created.id


async def test_duplicate_live_name_conflicts_and_writes_nothing(services: Services) -> None:
    await create(services, salesforce())
    before = await count_rows(services)
    message = await expect_error(
        create(services, salesforce(client_id="other")),
        grpc.StatusCode.ALREADY_EXISTS,
        "PROVIDER_ALREADY_EXISTS",
    )
    assert "salesforce" in message
    assert await count_rows(services) == before


@pytest.mark.parametrize(
    ("provider", "field"),
    [
        (salesforce(name="Sales Force"), "name"),
        (salesforce(name=""), "name"),
        (salesforce(auth_type="saml"), "auth_type"),
        (salesforce(auth_type=""), "auth_type"),
        (salesforce(client_id=""), "client_id"),
        (salesforce(token_url=""), "token_url"),
        (salesforce(auth_url="ftp://x"), "auth_url"),
        (providers_pb2.Provider(name="weather", auth_type="api_key"), "params.credential_schema"),
        (providers_pb2.Provider(name="ops", auth_type="nexus"), "scopes"),
        (providers_pb2.Provider(name="legacy", auth_type="basic_auth", client_id="x"), "client_id"),
    ],
)
async def test_invalid_providers_are_refused_and_nothing_is_written(
    services: Services, provider: providers_pb2.Provider, field: str
) -> None:
    before = await count_rows(services)
    message = await expect_error(create(services, provider), INVALID, "VALIDATION_FAILED")
    assert "SF_CLIENT_SECRET" not in message
    assert await count_rows(services) == before


async def test_missing_or_wrong_admin_key_is_unauthenticated(services: Services) -> None:
    registry, _ = stubs(services)
    request = providers_pb2.ListProvidersRequest()
    missing = await expect_error(
        registry.ListProviders(request), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"
    )
    wrong = await expect_error(
        registry.ListProviders(request, metadata=(("x-api-key", "nxa_wrong"),)),
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )
    assert missing == wrong
    before = await count_rows(services)
    await expect_error(
        registry.CreateProvider(
            gateway_pb2.CreateProviderRequest(provider=salesforce()),
            metadata=(("x-api-key", "nxa_wrong"),),
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )
    assert await count_rows(services) == before


async def test_broker_refuses_calls_without_the_internal_token(services: Services) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{services.broker_port}") as channel:
        broker = providers_pb2_grpc.ProviderRegistryServiceStub(channel)
        request = providers_pb2.ListProvidersRequest()
        await expect_error(
            broker.ListProviders(request), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"
        )
        await expect_error(
            broker.ListProviders(request, metadata=ADMIN),
            grpc.StatusCode.UNAUTHENTICATED,
            "UNAUTHENTICATED",
        )
        reply = await broker.ListProviders(
            request, metadata=(("x-nexus-internal-token", INTERNAL_TOKEN),)
        )
        assert list(reply.providers) == []


async def test_audit_trail_records_who_changed_what_without_secrets(services: Services) -> None:
    created = await create(services, salesforce())
    registry, audit = stubs(services)
    await registry.DeleteProvider(
        providers_pb2.DeleteProviderRequest(id=created.id), metadata=ADMIN
    )
    events = await audit.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(resource=f"providers/{created.id}"), metadata=ADMIN
    )
    assert [e.action for e in events.audit_events] == ["provider.delete", "provider.create"]
    assert {e.actor for e in events.audit_events} == {"admin:tests"}
    assert "SF_CLIENT_SECRET" not in str(events)
    assert events.audit_events[1].details["client_secret_set"] is True


async def test_metadata_groups_live_providers_by_auth_type(services: Services) -> None:
    await create(services, salesforce())
    await create(services, api_key_provider("weather"))
    registry, _ = stubs(services)
    reply = await registry.ListProviderMetadata(
        providers_pb2.ListProviderMetadataRequest(), metadata=ADMIN
    )
    grouped = {
        g.auth_type: [(p.name, list(p.credential_fields)) for p in g.providers]
        for g in reply.auth_types
    }
    assert grouped == {
        "oauth2": [("salesforce", [])],
        "api_key": [("weather", ["api_key"])],
        "basic_auth": [],
        "nexus": [],
    }


async def test_discovery_fills_in_a_provider_given_only_an_issuer(
    services: Services, oidc: OidcServer
) -> None:
    created = await create(
        services,
        providers_pb2.Provider(
            name="mock-idp",
            auth_type="oauth2",
            client_id="c",
            client_secret="s",
            issuer=oidc.issuer,
            enable_discovery=True,
            scopes=["openid"],
        ),
    )
    assert created.discovery.status == "complete"
    assert created.auth_url == f"{oidc.issuer}/authorize"
    assert created.token_url == f"{oidc.issuer}/token"
    assert created.jwks_uri == f"{oidc.issuer}/jwks"
    assert created.user_info_endpoint == f"{oidc.issuer}/userinfo"
    assert created.revocation_url == f"{oidc.issuer}/revoke"


async def test_a_discovery_document_for_another_issuer_is_refused(services: Services) -> None:
    before = await count_rows(services)
    with start_oidc_server(bad_issuer=True) as impostor:
        message = await expect_error(
            create(
                services,
                providers_pb2.Provider(
                    name="impostor",
                    auth_type="oauth2",
                    client_id="c",
                    client_secret="s",
                    issuer=impostor.issuer,
                    enable_discovery=True,
                ),
            ),
            INVALID,
            "DISCOVERY_DOCUMENT_INVALID",
        )
    assert "issuer does not match" in message
    assert await count_rows(services) == before


async def test_unreachable_issuer_is_pending_and_retried_on_use(services: Services) -> None:
    port = free_port()
    created = await create(
        services,
        providers_pb2.Provider(
            name="later-idp",
            auth_type="oauth2",
            client_id="c",
            client_secret="s",
            issuer=f"http://127.0.0.1:{port}",
            enable_discovery=True,
        ),
    )
    assert created.discovery.status == "pending"
    assert "could not be reached" in created.discovery.reason
    assert created.auth_url == ""
    registry, _ = stubs(services)
    with start_oidc_server(port=port):
        fetched = await registry.GetProvider(
            providers_pb2.GetProviderRequest(id=created.id), metadata=ADMIN
        )
    assert fetched.discovery.status == "complete" and fetched.discovery.reason == ""
    assert fetched.token_url == f"http://127.0.0.1:{port}/token"


async def test_an_oversized_request_is_refused_with_an_error_info(services: Services) -> None:
    before = await count_rows(services)
    await expect_error(
        create(services, salesforce(description="x" * (2 * 1024 * 1024))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "REQUEST_TOO_LARGE",
    )
    assert await count_rows(services) == before


async def test_secrets_never_reach_the_logs(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await create(services, salesforce())
    await expect_error(
        create(services, salesforce(client_id="other")),
        grpc.StatusCode.ALREADY_EXISTS,
        "PROVIDER_ALREADY_EXISTS",
    )
    logged = "\n".join(r.getMessage() + str(r.exc_info or "") for r in caplog.records)
    assert "method=/nexus.gateway.v1.ProviderService/CreateProvider outcome=OK" in logged
    assert "outcome=ALREADY_EXISTS" in logged and "caller=admin:tests" in logged
    assert "SF_CLIENT_SECRET" not in logged


async def test_reading_a_provider_survives_an_issuer_that_turns_bad(services: Services) -> None:
    port = free_port()
    created = await create(
        services,
        providers_pb2.Provider(
            name="flaky-idp",
            auth_type="oauth2",
            client_id="c",
            client_secret="s",
            issuer=f"http://127.0.0.1:{port}",
            enable_discovery=True,
        ),
    )
    registry, _ = stubs(services)
    with start_oidc_server(bad_issuer=True, port=port):
        fetched = await registry.GetProvider(
            providers_pb2.GetProviderRequest(id=created.id), metadata=ADMIN
        )
    assert fetched.discovery.status == "pending"
    assert "issuer does not match" in fetched.discovery.reason
