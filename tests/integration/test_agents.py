"""The agent registry and agent keys over gRPC, through the gateway, on SQLite
and PostgreSQL: admins manage agents with the admin key, agents authenticate
with their own bearer key and reach only the methods an agent needs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nexus.broker.v1 import audit_pb2, connections_pb2, sessions_pb2
from nexus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from nexus.policy.v1 import agents_pb2
from nexus_policy.adapters.orm import agent_keys

from tests.conftest import ADMIN_KEY, Services
from tests.integration.helpers import ADMIN, expect_error, peek

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
MAX_GRACE_SECONDS = 30 * 86400
KEY_SHAPE = re.compile(r"^nxag_([0-9a-f]{16})_[A-Za-z0-9_-]{40,}$")

# The three agents of the agent-sessions guide, step 2.
DOCS_AGENTS = (
    agents_pb2.Agent(
        agent_id="crm-agent",
        description="Reads customer records from Salesforce",
        allowed_scopes=["crm:contacts:read"],
    ),
    agents_pb2.Agent(
        agent_id="calendar-agent",
        description="Reads calendar events",
        allowed_scopes=["https://www.googleapis.com/auth/calendar.events.readonly"],
    ),
    agents_pb2.Agent(
        agent_id="ops-agent",
        description="Executes authorized internal financial operations",
        allowed_scopes=["acme:gliding", "acme:flaring"],
    ),
)


def registry(services: Services) -> gateway_pb2_grpc.AgentServiceStub:
    return gateway_pb2_grpc.AgentServiceStub(services.gateway)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def create(
    services: Services, agent_id: str, *scopes: str, **fields: str | bool
) -> agents_pb2.CreateAgentResponse:
    agent = agents_pb2.Agent(agent_id=agent_id, allowed_scopes=scopes or ["crm:contacts:read"])
    for name, value in fields.items():
        setattr(agent, name, value)
    return await registry(services).CreateAgent(
        gateway_pb2.CreateAgentRequest(agent=agent), metadata=ADMIN
    )


async def create_docs_agents(services: Services) -> dict[str, agents_pb2.CreateAgentResponse]:
    created = {}
    for agent in DOCS_AGENTS:
        created[agent.agent_id] = await registry(services).CreateAgent(
            gateway_pb2.CreateAgentRequest(agent=agent), metadata=ADMIN
        )
    return created


async def get(services: Services, agent_id: str) -> agents_pb2.Agent:
    return await registry(services).GetAgent(
        agents_pb2.GetAgentRequest(agent_id=agent_id), metadata=ADMIN
    )


async def list_ids(services: Services) -> list[str]:
    listed = await registry(services).ListAgents(
        agents_pb2.ListAgentsRequest(page_size=100), metadata=ADMIN
    )
    assert not listed.next_page_token
    return [agent.agent_id for agent in listed.agents]


async def update(services: Services, agent: agents_pb2.Agent, *paths: str) -> agents_pb2.Agent:
    request = gateway_pb2.UpdateAgentRequest(agent_id=agent.agent_id, agent=agent)
    if paths:
        request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
    return await registry(services).UpdateAgent(request, metadata=ADMIN)


async def rotate(
    services: Services, agent_id: str, grace_seconds: int = 0
) -> agents_pb2.RotateAgentKeyResponse:
    rotation = agents_pb2.RotateAgentKeyRequest(grace_period_seconds=grace_seconds)
    return await registry(services).RotateAgentKey(
        gateway_pb2.RotateAgentKeyRequest(agent_id=agent_id, rotation=rotation), metadata=ADMIN
    )


async def introspect(
    services: Services, metadata: tuple[tuple[str, str], ...] | None
) -> sessions_pb2.IntrospectSessionResponse:
    """An agent method that needs any valid caller; a garbage token is simply inactive."""
    stub = gateway_pb2_grpc.SessionServiceStub(services.gateway)
    request = gateway_pb2.IntrospectSessionRequest(
        introspection=sessions_pb2.IntrospectSessionRequest(token="not-a-session-token")
    )
    return await stub.IntrospectSession(request, metadata=metadata)


async def assert_key_works(services: Services, key: str) -> None:
    answer = await introspect(services, bearer(key))
    assert answer == sessions_pb2.IntrospectSessionResponse(active=False)


async def assert_key_refused(services: Services, key: str) -> None:
    await expect_error(introspect(services, bearer(key)), UNAUTHENTICATED, "UNAUTHENTICATED")


def stored_keys(services: Services) -> list[sa.Row[tuple[str, str, bytes, datetime | None]]]:
    """The rows of the key table, read straight from the policy database."""
    engine = peek(services.env["NEXUS_POLICY_DATABASE_URL"])
    columns = agent_keys.c
    query = sa.select(columns.key_id, columns.agent_id, columns.digest, columns.expires_at)
    try:
        with engine.connect() as connection:
            return list(connection.execute(query))
    finally:
        engine.dispose()


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; Nexus stores UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def close_to(stamp: datetime, expected: datetime) -> bool:
    return abs(stamp - expected) < timedelta(seconds=30)


# Registration


async def test_registration_returns_the_agent_and_its_key(services: Services) -> None:
    before = datetime.now(UTC)
    created = await create_docs_agents(services)
    keys = set()
    for given in DOCS_AGENTS:
        response = created[given.agent_id]
        agent = response.agent
        assert agent.agent_id == given.agent_id
        assert agent.description == given.description
        assert list(agent.allowed_scopes) == list(given.allowed_scopes)
        assert agent.HasField("enabled") and agent.enabled
        assert re.fullmatch(r"[0-9a-f]{16}", agent.key_id)
        assert close_to(agent.create_time.ToDatetime(UTC), before)
        assert agent.update_time == agent.create_time
        match = KEY_SHAPE.match(response.agent_key)
        assert match is not None and match.group(1) == agent.key_id
        keys.add(response.agent_key)
    assert len(keys) == 3


async def test_the_agent_key_is_never_returned_again(services: Services) -> None:
    created = await create_docs_agents(services)
    listed = await registry(services).ListAgents(agents_pb2.ListAgentsRequest(), metadata=ADMIN)
    assert [a.agent_id for a in listed.agents] == ["calendar-agent", "crm-agent", "ops-agent"]
    for agent_id, response in created.items():
        fetched = await get(services, agent_id)
        assert fetched == response.agent
        assert fetched in listed.agents
        secret = response.agent_key.encode()
        for message in (fetched, listed):
            assert secret not in message.SerializeToString()
            # nxag_<key id>_<secret>: the secret itself may hold "_".
            assert secret.split(b"_", 2)[2] not in message.SerializeToString()


async def test_an_agent_may_be_registered_disabled(services: Services) -> None:
    created = await create(services, "crm-agent", enabled=False)
    assert created.agent.HasField("enabled") and not created.agent.enabled
    assert not (await get(services, "crm-agent")).enabled


async def test_only_a_digest_of_the_key_is_stored(services: Services) -> None:
    created = await create(services, "crm-agent")
    [row] = stored_keys(services)
    assert row.key_id == created.agent.key_id and row.agent_id == "crm-agent"
    assert bytes(row.digest) == hashlib.sha256(created.agent_key.encode()).digest()
    assert row.expires_at is None


async def test_agent_ids_are_unique(services: Services) -> None:
    first = await create(services, "crm-agent", description="the first")
    await expect_error(
        create(services, "crm-agent", "acme:gliding", description="the second"),
        grpc.StatusCode.ALREADY_EXISTS,
        "AGENT_ALREADY_EXISTS",
    )
    assert await get(services, "crm-agent") == first.agent
    assert len(stored_keys(services)) == 1
    await assert_key_works(services, first.agent_key)


async def test_invalid_agents_are_refused_and_nothing_is_stored(services: Services) -> None:
    invalid: list[agents_pb2.Agent] = [
        agents_pb2.Agent(agent_id=agent_id, allowed_scopes=["crm:contacts:read"])
        for agent_id in ("CRM Agent", "", "a" * 64, "crm_agent", "crm-agent\n")
    ]
    invalid += [
        agents_pb2.Agent(agent_id="crm-agent", allowed_scopes=scopes)
        for scopes in (
            [],
            ["crm contacts"],
            ["crm:contacts:read", "crm:contacts:read"],
            [""],
            ["a" * 257],
            ['crm:"contacts"'],  # not an RFC 6749 scope-token
            ["crm:contacts\x07"],
            ["crm:kontakte:lesen:\u00e4"],
        )
    ]
    invalid += [
        agents_pb2.Agent(
            agent_id="crm-agent", description=description, allowed_scopes=["crm:contacts:read"]
        )
        for description in ("x" * 1025, "NUL\x00")  # PostgreSQL text cannot hold NUL
    ]
    for agent in invalid:
        call = registry(services).CreateAgent(
            gateway_pb2.CreateAgentRequest(agent=agent), metadata=ADMIN
        )
        await expect_error(call, INVALID, "VALIDATION_FAILED")
    assert await list_ids(services) == []
    assert stored_keys(services) == []


async def test_the_longest_agent_id_is_accepted(services: Services) -> None:
    longest = "a" * 63
    created = await create(services, longest)
    assert (await get(services, longest)).agent_id == longest
    await assert_key_works(services, created.agent_key)


# Listing


async def test_list_pages_through_agents_in_id_order(services: Services) -> None:
    await create_docs_agents(services)
    stub = registry(services)
    first = await stub.ListAgents(agents_pb2.ListAgentsRequest(page_size=2), metadata=ADMIN)
    assert [a.agent_id for a in first.agents] == ["calendar-agent", "crm-agent"]
    assert first.next_page_token
    second = await stub.ListAgents(
        agents_pb2.ListAgentsRequest(page_size=2, page_token=first.next_page_token),
        metadata=ADMIN,
    )
    assert [a.agent_id for a in second.agents] == ["ops-agent"]
    assert second.next_page_token == ""


async def test_a_page_that_ends_exactly_has_no_next_token(services: Services) -> None:
    await create_docs_agents(services)
    listed = await registry(services).ListAgents(
        agents_pb2.ListAgentsRequest(page_size=3), metadata=ADMIN
    )
    assert len(listed.agents) == 3 and listed.next_page_token == ""


async def test_a_bad_page_token_or_size_is_refused(services: Services) -> None:
    await create_docs_agents(services)
    stub = registry(services)
    for token in ("not-a-token", "e30", "eyJwIjogMX0"):
        await expect_error(
            stub.ListAgents(agents_pb2.ListAgentsRequest(page_token=token), metadata=ADMIN),
            INVALID,
            "INVALID_PAGE_TOKEN",
        )
    await expect_error(
        stub.ListAgents(agents_pb2.ListAgentsRequest(page_size=-1), metadata=ADMIN),
        INVALID,
        "INVALID_ARGUMENT",
    )


# Updating


async def test_update_with_a_mask_changes_only_the_named_fields(services: Services) -> None:
    created = (await create(services, "crm-agent", description="Reads contacts")).agent
    change = agents_pb2.Agent(
        agent_id="crm-agent",
        description="ignored: not in the mask",
        allowed_scopes=["crm:contacts:read", "crm:contacts:write"],
    )
    updated = await update(services, change, "allowed_scopes")
    assert list(updated.allowed_scopes) == ["crm:contacts:read", "crm:contacts:write"]
    assert updated.description == "Reads contacts"
    assert updated.enabled and updated.key_id == created.key_id
    assert updated.create_time == created.create_time
    assert updated.update_time.ToDatetime() > created.update_time.ToDatetime()
    assert await get(services, "crm-agent") == updated


async def test_update_without_a_mask_changes_the_fields_given(services: Services) -> None:
    created = (await create(services, "ops-agent", "acme:gliding", "acme:flaring")).agent
    disabled = await update(services, agents_pb2.Agent(agent_id="ops-agent", enabled=False))
    assert not disabled.enabled
    assert list(disabled.allowed_scopes) == list(created.allowed_scopes)
    assert disabled.description == created.description
    assert not (await get(services, "ops-agent")).enabled
    enabled = await update(services, agents_pb2.Agent(agent_id="ops-agent", enabled=True))
    assert enabled.enabled and (await get(services, "ops-agent")).enabled


async def test_update_refuses_bad_changes_and_changes_nothing(services: Services) -> None:
    created = (await create(services, "crm-agent")).agent
    bad = (
        (agents_pb2.Agent(agent_id="crm-agent", description="x"), ("name",)),
        (agents_pb2.Agent(agent_id="crm-agent", key_id="0123456789abcdef"), ("key_id",)),
        (agents_pb2.Agent(agent_id="crm-agent", description="x"), ("description", "agent_id")),
        (agents_pb2.Agent(agent_id="crm-agent"), ()),
        (agents_pb2.Agent(agent_id="crm-agent"), ("allowed_scopes",)),
        (agents_pb2.Agent(agent_id="crm-agent", allowed_scopes=["a b"]), ()),
    )
    for agent, paths in bad:
        await expect_error(update(services, agent, *paths), INVALID, "VALIDATION_FAILED")
    assert await get(services, "crm-agent") == created


async def test_updating_an_unknown_agent_is_not_found(services: Services) -> None:
    await expect_error(
        update(services, agents_pb2.Agent(agent_id="ghost-agent", enabled=False)),
        NOT_FOUND,
        "AGENT_NOT_FOUND",
    )
    await expect_error(get(services, "ghost-agent"), NOT_FOUND, "AGENT_NOT_FOUND")
    assert await list_ids(services) == []


# Authentication


async def test_an_agent_key_authenticates_agent_methods(services: Services) -> None:
    created = await create_docs_agents(services)
    for response in created.values():
        await assert_key_works(services, response.agent_key)
    key = created["crm-agent"].agent_key
    answer = await introspect(services, (("authorization", f"bearer {key}"),))
    assert not answer.active


async def test_wrong_and_malformed_keys_are_unauthenticated(services: Services) -> None:
    key = (await create(services, "crm-agent")).agent_key
    key_id = key.split("_")[1]
    other_id = "0" * 16 if key_id != "0" * 16 else "1" * 16
    for wrong in (
        key[:-1] + ("A" if key[-1] != "A" else "B"),  # the right key id, a wrong secret
        f"nxag_{key_id}_",  # no secret
        f"nxag_{other_id}_{key.split('_', 2)[2]}",  # the secret under another key id
        key.replace("nxag_", "nxa_", 1),
        "nxag_garbage",
        "not-a-key",
        ADMIN_KEY,
        "",
    ):
        await assert_key_refused(services, wrong)
    for authorization in (key, f"Basic {key}", f"Token {key}"):
        await expect_error(
            introspect(services, (("authorization", authorization),)),
            UNAUTHENTICATED,
            "UNAUTHENTICATED",
        )
    await assert_key_works(services, key)


async def test_a_disabled_agent_is_refused_until_enabled(services: Services) -> None:
    key = (await create(services, "ops-agent", "acme:gliding")).agent_key
    await update(services, agents_pb2.Agent(agent_id="ops-agent", enabled=False))
    await expect_error(
        introspect(services, bearer(key)), grpc.StatusCode.PERMISSION_DENIED, "AGENT_DISABLED"
    )
    # A wrong key for a disabled agent says nothing about the agent.
    await assert_key_refused(services, key[:-1] + ("A" if key[-1] != "A" else "B"))
    await update(services, agents_pb2.Agent(agent_id="ops-agent", enabled=True))
    await assert_key_works(services, key)


async def test_a_registered_disabled_agent_cannot_authenticate(services: Services) -> None:
    key = (await create(services, "ops-agent", "acme:gliding", enabled=False)).agent_key
    await expect_error(
        introspect(services, bearer(key)), grpc.StatusCode.PERMISSION_DENIED, "AGENT_DISABLED"
    )


async def test_an_agent_key_cannot_call_admin_methods(services: Services) -> None:
    key = (await create(services, "crm-agent")).agent_key
    agent = bearer(key)
    stub = registry(services)
    connections = gateway_pb2_grpc.ConnectionServiceStub(services.gateway)
    calls = (
        stub.ListAgents(agents_pb2.ListAgentsRequest(), metadata=agent),
        stub.GetAgent(agents_pb2.GetAgentRequest(agent_id="crm-agent"), metadata=agent),
        stub.CreateAgent(
            gateway_pb2.CreateAgentRequest(
                agent=agents_pb2.Agent(agent_id="rogue-agent", allowed_scopes=["a"])
            ),
            metadata=agent,
        ),
        stub.RotateAgentKey(
            gateway_pb2.RotateAgentKeyRequest(agent_id="crm-agent"), metadata=agent
        ),
        stub.DeleteAgent(agents_pb2.DeleteAgentRequest(agent_id="crm-agent"), metadata=agent),
        connections.ListConnections(connections_pb2.ListConnectionsRequest(), metadata=agent),
    )
    for call in calls:
        await expect_error(call, UNAUTHENTICATED, "UNAUTHENTICATED")
    assert await list_ids(services) == ["crm-agent"]
    await assert_key_works(services, key)


async def test_agent_methods_need_a_credential(services: Services) -> None:
    await expect_error(introspect(services, None), UNAUTHENTICATED, "UNAUTHENTICATED")
    await expect_error(
        introspect(services, (("x-api-key", "nxa_wrong"),)), UNAUTHENTICATED, "UNAUTHENTICATED"
    )
    assert not (await introspect(services, ADMIN)).active


async def test_the_jwk_set_needs_no_credential(services: Services) -> None:
    stub = gateway_pb2_grpc.SessionServiceStub(services.gateway)
    body = await stub.GetJwks(sessions_pb2.GetJwksRequest())
    assert "json" in body.content_type
    jwks = json.loads(body.data)
    assert jwks["keys"] and all({"kty", "kid"} <= set(jwk) for jwk in jwks["keys"])
    assert all("d" not in jwk for jwk in jwks["keys"])


# Rotation


async def test_rotation_without_grace_ends_the_old_key_at_once(services: Services) -> None:
    created = await create(services, "crm-agent")
    before = datetime.now(UTC)
    rotated = await rotate(services, "crm-agent")
    assert rotated.agent.key_id != created.agent.key_id
    match = KEY_SHAPE.match(rotated.agent_key)
    assert match is not None and match.group(1) == rotated.agent.key_id
    assert close_to(rotated.previous_key_expire_time.ToDatetime(UTC), before)
    assert (await get(services, "crm-agent")).key_id == rotated.agent.key_id
    await assert_key_refused(services, created.agent_key)
    await assert_key_works(services, rotated.agent_key)


async def test_rotation_with_grace_keeps_the_old_key_working(services: Services) -> None:
    first = await create(services, "crm-agent")
    before = datetime.now(UTC)
    second = await rotate(services, "crm-agent", 3600)
    expire = second.previous_key_expire_time.ToDatetime(UTC)
    assert close_to(expire, before + timedelta(seconds=3600))
    await assert_key_works(services, first.agent_key)
    await assert_key_works(services, second.agent_key)
    third = await rotate(services, "crm-agent", 0)
    await assert_key_refused(services, first.agent_key)
    await assert_key_refused(services, second.agent_key)
    await assert_key_works(services, third.agent_key)


async def test_a_retired_key_stops_when_its_grace_period_ends(services: Services) -> None:
    first = await create(services, "crm-agent")
    second = await rotate(services, "crm-agent", 1)
    await assert_key_works(services, first.agent_key)
    left = second.previous_key_expire_time.ToDatetime(UTC) - datetime.now(UTC)
    await asyncio.sleep(max(left.total_seconds(), 0) + 0.2)
    await assert_key_refused(services, first.agent_key)
    await assert_key_works(services, second.agent_key)


async def test_a_later_rotation_never_extends_a_retired_key(services: Services) -> None:
    first = await create(services, "crm-agent")
    second = await rotate(services, "crm-agent", 60)
    third = await rotate(services, "crm-agent", 3600)
    expiry = {row.key_id: row.expires_at for row in stored_keys(services)}
    first_expiry, second_expiry = expiry[first.agent.key_id], expiry[second.agent.key_id]
    assert first_expiry is not None and second_expiry is not None
    assert close_to(as_utc(first_expiry), second.previous_key_expire_time.ToDatetime(UTC))
    assert close_to(as_utc(second_expiry), third.previous_key_expire_time.ToDatetime(UTC))
    assert as_utc(first_expiry) < as_utc(second_expiry)
    assert expiry[third.agent.key_id] is None


async def test_the_grace_period_is_at_most_thirty_days(services: Services) -> None:
    created = await create(services, "crm-agent")
    for grace in (-1, MAX_GRACE_SECONDS + 1):
        await expect_error(rotate(services, "crm-agent", grace), INVALID, "VALIDATION_FAILED")
    assert (await get(services, "crm-agent")).key_id == created.agent.key_id
    await assert_key_works(services, created.agent_key)
    before = datetime.now(UTC)
    longest = await rotate(services, "crm-agent", MAX_GRACE_SECONDS)
    assert close_to(
        longest.previous_key_expire_time.ToDatetime(UTC),
        before + timedelta(seconds=MAX_GRACE_SECONDS),
    )
    await assert_key_works(services, created.agent_key)


async def test_rotating_an_unknown_agent_is_not_found(services: Services) -> None:
    await expect_error(rotate(services, "ghost-agent"), NOT_FOUND, "AGENT_NOT_FOUND")
    assert stored_keys(services) == []


# Deletion


async def test_deleting_an_agent_removes_it_and_every_key(services: Services) -> None:
    created = await create_docs_agents(services)
    old = created["crm-agent"].agent_key
    new = (await rotate(services, "crm-agent", 3600)).agent_key
    stub = registry(services)
    await stub.DeleteAgent(agents_pb2.DeleteAgentRequest(agent_id="crm-agent"), metadata=ADMIN)
    await expect_error(get(services, "crm-agent"), NOT_FOUND, "AGENT_NOT_FOUND")
    assert await list_ids(services) == ["calendar-agent", "ops-agent"]
    await assert_key_refused(services, old)
    await assert_key_refused(services, new)
    assert {row.agent_id for row in stored_keys(services)} == {"calendar-agent", "ops-agent"}
    await assert_key_works(services, created["ops-agent"].agent_key)
    await expect_error(
        stub.DeleteAgent(agents_pb2.DeleteAgentRequest(agent_id="crm-agent"), metadata=ADMIN),
        NOT_FOUND,
        "AGENT_NOT_FOUND",
    )


async def test_a_recreated_agent_does_not_revive_old_keys(services: Services) -> None:
    old = (await create(services, "crm-agent")).agent_key
    await registry(services).DeleteAgent(
        agents_pb2.DeleteAgentRequest(agent_id="crm-agent"), metadata=ADMIN
    )
    new = (await create(services, "crm-agent")).agent_key
    await assert_key_refused(services, old)
    await assert_key_works(services, new)


async def agent_audit_trail(services: Services, expected: int) -> list[audit_pb2.AuditEvent]:
    """The agent events in the broker's trail, once the policy service handed
    over ``expected`` of them (it forwards in the background)."""
    audit = gateway_pb2_grpc.AuditServiceStub(services.gateway)
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        page = await audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(page_size=100), metadata=ADMIN
        )
        events = [e for e in page.audit_events if e.action.startswith("agent.")]
        if len(events) >= expected or asyncio.get_running_loop().time() > deadline:
            return list(reversed(events))
        await asyncio.sleep(0.1)


async def test_admin_changes_to_agents_join_the_audit_trail(services: Services) -> None:
    created = await create(services, "crm-agent", "crm:contacts:read")
    stub = registry(services)
    await stub.UpdateAgent(
        gateway_pb2.UpdateAgentRequest(agent_id="crm-agent", agent=agents_pb2.Agent(enabled=False)),
        metadata=ADMIN,
    )
    rotated = await stub.RotateAgentKey(
        gateway_pb2.RotateAgentKeyRequest(agent_id="crm-agent"), metadata=ADMIN
    )
    await stub.DeleteAgent(agents_pb2.DeleteAgentRequest(agent_id="crm-agent"), metadata=ADMIN)

    events = await agent_audit_trail(services, 4)

    assert [e.action for e in events] == [
        "agent.create",
        "agent.update",
        "agent.rotate_key",
        "agent.delete",
    ]
    assert {e.resource for e in events} == {"agents/crm-agent"}
    assert {e.actor for e in events} == {"admin:tests"}
    assert events[1].details["enabled"] is False
    assert events[2].details["previous_key_id"] == created.agent.key_id
    trail = str(events)
    assert created.agent_key not in trail and rotated.agent_key not in trail
    # A refused change records nothing: the next event handed over (in order)
    # is the marker's.
    await expect_error(
        stub.DeleteAgent(agents_pb2.DeleteAgentRequest(agent_id="crm-agent"), metadata=ADMIN),
        grpc.StatusCode.NOT_FOUND,
        "AGENT_NOT_FOUND",
    )
    await create(services, "marker-agent")
    after = await agent_audit_trail(services, 5)
    assert [e.resource for e in after[4:]] == ["agents/marker-agent"]


async def _bind(
    services: Services, agent_id: str, bindings: agents_pb2.AgentBindings | None
) -> agents_pb2.Agent:
    agent = agents_pb2.Agent()
    if bindings is not None:
        agent.bindings.CopyFrom(bindings)
    return await registry(services).UpdateAgent(
        gateway_pb2.UpdateAgentRequest(
            agent_id=agent_id, agent=agent, update_mask=field_mask_pb2.FieldMask(paths=["bindings"])
        ),
        metadata=ADMIN,
    )


async def test_admins_read_change_and_clear_an_agents_bindings(services: Services) -> None:
    bound = agents_pb2.AgentBindings(providers=["salesforce"], workspaces=["alice", "bob"])
    agent = agents_pb2.Agent(agent_id="crm-agent", allowed_scopes=["crm:contacts:read"])
    agent.bindings.CopyFrom(bound)
    await registry(services).CreateAgent(
        gateway_pb2.CreateAgentRequest(agent=agent), metadata=ADMIN
    )
    assert (await get(services, "crm-agent")).bindings == bound

    obo_only = agents_pb2.AgentBindings(providers=["*"], on_behalf_of_only=True)
    assert (await _bind(services, "crm-agent", obo_only)).bindings == obo_only
    # A change of another field leaves the bindings alone.
    await registry(services).UpdateAgent(
        gateway_pb2.UpdateAgentRequest(
            agent_id="crm-agent", agent=agents_pb2.Agent(description="reads contacts")
        ),
        metadata=ADMIN,
    )
    assert (await get(services, "crm-agent")).bindings == obo_only

    cleared = await _bind(services, "crm-agent", None)
    assert not cleared.HasField("bindings")


_Bind = agents_pb2.AgentBindings


@pytest.mark.parametrize(
    ("bindings", "field"),
    [
        (_Bind(workspaces=["alice"]), "bindings.providers"),
        (_Bind(providers=["salesforce"]), "bindings.workspaces"),
        (_Bind(providers=["*"], workspaces=["a"], on_behalf_of_only=True), "bindings.workspaces"),
        (_Bind(providers=["*", "salesforce"], workspaces=["a"]), "bindings.providers"),
        (_Bind(providers=["x"], workspaces=["a", "a"]), "bindings.workspaces"),
        (_Bind(providers=["x"], workspaces=["with space"]), "bindings.workspaces"),
        (_Bind(providers=["x"], workspaces=["w" * 256]), "bindings.workspaces"),
    ],
)
async def test_bindings_that_make_no_sense_are_refused_and_nothing_changes(
    services: Services, bindings: agents_pb2.AgentBindings, field: str
) -> None:
    await create(services, "crm-agent")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _bind(services, "crm-agent", bindings)
    assert refused.value.code() == INVALID
    status = rpc_status.from_call(refused.value)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.metadata["field"]) == ("VALIDATION_FAILED", field)
    assert not (await get(services, "crm-agent")).HasField("bindings")


async def test_binding_changes_are_audited_and_every_workspace_is_flagged(
    services: Services,
) -> None:
    await create(services, "crm-agent")
    await _bind(services, "crm-agent", agents_pb2.AgentBindings(providers=["*"], workspaces=["*"]))
    await _bind(
        services, "crm-agent", agents_pb2.AgentBindings(providers=["crm"], workspaces=["alice"])
    )

    events = await agent_audit_trail(services, 3)

    assert [e.action for e in events] == ["agent.create", "agent.update", "agent.update"]
    assert events[0].details["bindings"] is None
    assert events[1].details["all_workspaces"] is True
    assert events[1].details["bindings"]["workspaces"] == ["*"]
    assert events[2].details["all_workspaces"] is False
    assert events[2].details["bindings"]["providers"] == ["crm"]
