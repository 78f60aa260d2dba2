"""A provider's stored client secret stays bound to its endpoints (gRPC, SQLite and PostgreSQL).

Moving an endpoint would send the stored secret, and every connection's refresh
token, to the new host on the next refresh. So a PATCH that moves one must give
the secret again, and the move is audited as ``provider.endpoint_change``.
"""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nexus.broker.v1 import audit_pb2, providers_pb2

from tests.conftest import Services
from tests.integration.helpers import ADMIN, expect_error
from tests.integration.test_provider_registry import create, salesforce, stubs, update

REFUSED = grpc.StatusCode.FAILED_PRECONDITION
REASON = "SECRET_REQUIRED_FOR_ENDPOINT_CHANGE"
EVIL = "https://collector.example"
MOVES = {
    "token_url": providers_pb2.Provider(token_url=f"{EVIL}/token"),
    "auth_url": providers_pb2.Provider(auth_url=f"{EVIL}/authorize"),
    "revocation_url": providers_pb2.Provider(revocation_url=f"{EVIL}/revoke"),
    "jwks_uri": providers_pb2.Provider(jwks_uri=f"{EVIL}/jwks"),
    "issuer": providers_pb2.Provider(issuer=EVIL),
    "api_base_url": providers_pb2.Provider(api_base_url=f"{EVIL}/api"),
    "user_info_endpoint": providers_pb2.Provider(user_info_endpoint=f"{EVIL}/me"),
}


async def _refused_fields(call: Awaitable[object]) -> str:
    """The ``fields`` the refusal's ErrorInfo names."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == REFUSED, caught.value.details()
    status = rpc_status.from_call(caught.value)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == REASON
    return info.metadata["fields"]


async def _events(services: Services, provider_id: str) -> list[audit_pb2.AuditEvent]:
    _, audit = stubs(services)
    reply = await audit.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(resource=f"providers/{provider_id}"), metadata=ADMIN
    )
    return list(reply.audit_events)


async def test_moving_any_endpoint_without_the_secret_is_refused_and_changes_nothing(
    services: Services,
) -> None:
    created = await create(services, salesforce())
    registry, _ = stubs(services)
    for field, patch in MOVES.items():
        with_description = providers_pb2.Provider(description="moved")
        with_description.MergeFrom(patch)
        message = await expect_error(
            update(services, created.id, with_description, field, "description"), REFUSED, REASON
        )
        assert field in message and "client_secret" in message, message
    # Without a mask, a non-default value counts as a change too (AIP-134).
    refused = update(services, "salesforce", providers_pb2.Provider(token_url=f"{EVIL}/t"))
    assert await _refused_fields(refused) == "token_url"
    fetched = await registry.GetProvider(
        providers_pb2.GetProviderRequest(id=created.id), metadata=ADMIN
    )
    assert fetched == created
    assert [e.action for e in await _events(services, created.id)] == ["provider.create"]


async def test_several_moved_endpoints_are_all_named(services: Services) -> None:
    created = await create(services, salesforce())
    refused = update(
        services,
        created.id,
        providers_pb2.Provider(token_url=f"{EVIL}/t", issuer=EVIL),
        "token_url",
        "issuer",
    )
    assert await _refused_fields(refused) == "issuer,token_url"


async def test_with_the_secret_the_move_succeeds_and_is_audited_without_it(
    services: Services,
) -> None:
    created = await create(services, salesforce())
    moved = await update(
        services,
        created.id,
        providers_pb2.Provider(token_url=f"{EVIL}/token", client_secret="NEW_SECRET_VALUE"),
        "token_url",
        "client_secret",
    )
    assert moved.token_url == f"{EVIL}/token" and moved.has_client_secret
    events = await _events(services, created.id)
    assert sorted(e.action for e in events) == [
        "provider.create",
        "provider.endpoint_change",
        "provider.update",
    ]
    (change_event,) = (e for e in events if e.action == "provider.endpoint_change")
    change = json_format.MessageToDict(change_event.details)
    assert change == {
        "name": "salesforce",
        "source": "update",
        # No connection holds tokens, so nothing waits for a confirmation.
        "endpoints_pending": False,
        "endpoints": {
            "token_url": {
                "old": "https://login.salesforce.com/services/oauth2/token",
                "new": f"{EVIL}/token",
            }
        },
        "client_secret_given": True,
    }
    assert change_event.actor == "admin:tests"
    assert "NEW_SECRET_VALUE" not in str(events) and "SF_CLIENT_SECRET" not in str(events)


async def test_unchanged_endpoints_and_other_fields_need_no_secret(services: Services) -> None:
    created = await create(services, salesforce())
    same = await update(
        services,
        created.id,
        providers_pb2.Provider(token_url=created.token_url, description="CRM"),
        "token_url",
        "description",
    )
    assert same.description == "CRM"
    actions = [e.action for e in await _events(services, created.id)]
    assert actions == ["provider.update", "provider.create"]


async def test_a_public_client_holds_no_secret_so_its_move_is_only_audited(
    services: Services,
) -> None:
    public = salesforce(name="public-crm")
    public.ClearField("client_secret")
    public.params.update({"token_endpoint_auth_method": "none"})
    created = await create(services, public)
    assert not created.has_client_secret
    await update(services, created.id, providers_pb2.Provider(token_url=f"{EVIL}/t"), "token_url")
    (change,) = (
        e for e in await _events(services, created.id) if e.action == "provider.endpoint_change"
    )
    assert json_format.MessageToDict(change.details)["client_secret_given"] is False
