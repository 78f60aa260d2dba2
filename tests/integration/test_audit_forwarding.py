"""The policy service's audit outbox: events wait while the broker is away and
are recorded exactly once however often they are delivered."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from nexus.broker.v1 import audit_pb2, audit_pb2_grpc
from nexus_common import AuditEvent, DependencyUnavailable, InternalClient, create_engine
from nexus_policy.adapters.repository import PolicyUnitOfWork
from nexus_policy.server import migrate_database
from nexus_policy.service_layer.audit_forwarder import AuditForwarder
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import async_sessionmaker

from tests.conftest import INTERNAL_TOKEN, Services
from tests.integration.helpers import ADMIN
from tools.devstack import free_port

INTERNAL = (("x-nexus-internal-token", INTERNAL_TOKEN),)


def _event(action: str, at: datetime | None = None) -> AuditEvent:
    return AuditEvent("admin:ops", action, "agents/ops-agent", at or datetime.now(UTC), {"n": 1})


async def test_a_redelivered_event_is_recorded_once(services: Services) -> None:
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(datetime.now(UTC))
    event = audit_pb2.AuditEvent(
        id="5b0e7e0c-3b51-4d5c-9a55-0d9c2f1e1a01",
        event_time=when,
        actor="admin:ops",
        action="agent.create",
        resource="agents/ops-agent",
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{services.broker_port}") as channel:
        audit = audit_pb2_grpc.AuditLogServiceStub(channel)
        request = audit_pb2.RecordAuditEventsRequest(audit_events=[event, event])
        assert (await audit.RecordAuditEvents(request, metadata=INTERNAL)).recorded == 1
        assert (await audit.RecordAuditEvents(request, metadata=INTERNAL)).recorded == 0
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await audit.RecordAuditEvents(request, metadata=ADMIN)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        listed = await audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(), metadata=INTERNAL)
    assert [e.id for e in listed.audit_events].count(event.id) == 1


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Callable[[], PolicyUnitOfWork]]:
    """An outbox of the test's own: a running policy service forwards its own."""
    outbox_url = f"sqlite:///{tmp_path / 'policy.db'}"
    migrate_database(outbox_url)
    engine = create_engine(outbox_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    yield lambda: PolicyUnitOfWork(sessions)
    await engine.dispose()


async def test_events_wait_in_the_outbox_while_the_broker_is_away(
    services: Services, outbox: Callable[[], PolicyUnitOfWork]
) -> None:
    away = InternalClient("broker", f"127.0.0.1:{free_port()}", INTERNAL_TOKEN, 2.0)
    back = InternalClient("broker", f"127.0.0.1:{services.broker_port}", INTERNAL_TOKEN)
    try:
        async with outbox() as work:
            for action in ("agent.create", "agent.update"):
                await work.outbox.add(_event(action))
            await work.commit()
        with pytest.raises(DependencyUnavailable):
            await AuditForwarder(outbox, away).forward_once()
        async with outbox() as work:
            waiting = await work.outbox.oldest(10)
        assert [e.action for e in waiting] == ["agent.create", "agent.update"]

        assert await AuditForwarder(outbox, back, batch=1).forward_once() == 1
        assert await AuditForwarder(outbox, back, batch=1).forward_once() == 1
        assert await AuditForwarder(outbox, back).forward_once() == 0
    finally:
        await away.close()
        await back.close()


async def test_the_age_of_the_oldest_waiting_event_is_a_metric(
    outbox: Callable[[], PolicyUnitOfWork],
) -> None:
    # No policy service runs here, so no other forwarder sets the gauge meanwhile.
    away = InternalClient("broker", f"127.0.0.1:{free_port()}", INTERNAL_TOKEN, 2.0)
    try:
        async with outbox() as work:
            await work.outbox.add(_event("agent.create", datetime.now(UTC) - timedelta(minutes=5)))
            await work.commit()
        with pytest.raises(DependencyUnavailable):
            await AuditForwarder(outbox, away).forward_once()
    finally:
        await away.close()
    age = REGISTRY.get_sample_value("nexus_audit_outbox_oldest_event_age_seconds")
    assert age is not None and 300 <= age < 3600
