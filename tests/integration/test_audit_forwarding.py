"""The policy service's audit outbox: events wait while the broker is away and
are recorded exactly once however often they are delivered."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from nexus.broker.v1 import audit_pb2, audit_pb2_grpc
from nexus_common import AuditEvent, DependencyUnavailable, InternalClient, create_engine
from nexus_policy.adapters.repository import PolicyUnitOfWork
from nexus_policy.server import migrate_database
from nexus_policy.service_layer.audit_forwarder import AuditForwarder
from sqlalchemy.ext.asyncio import async_sessionmaker

from tests.conftest import INTERNAL_TOKEN, Services
from tests.integration.helpers import ADMIN
from tools.devstack import free_port

INTERNAL = (("x-nexus-internal-token", INTERNAL_TOKEN),)


def _event(action: str) -> AuditEvent:
    return AuditEvent("admin:ops", action, "agents/ops-agent", datetime.now(UTC), {"n": 1})


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


async def test_events_wait_in_the_outbox_while_the_broker_is_away(
    services: Services, tmp_path: Path
) -> None:
    # An outbox of this test's own: the running policy service forwards its own.
    outbox_url = f"sqlite:///{tmp_path / 'policy.db'}"
    migrate_database(outbox_url)
    engine = create_engine(outbox_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    def uow() -> PolicyUnitOfWork:
        return PolicyUnitOfWork(sessions)

    away = InternalClient("broker", f"127.0.0.1:{free_port()}", INTERNAL_TOKEN, 2.0)
    back = InternalClient("broker", f"127.0.0.1:{services.broker_port}", INTERNAL_TOKEN)
    try:
        async with uow() as work:
            for action in ("agent.create", "agent.update"):
                await work.outbox.add(_event(action))
            await work.commit()
        with pytest.raises(DependencyUnavailable):
            await AuditForwarder(uow, away).forward_once()
        async with uow() as work:
            waiting = await work.outbox.oldest(10)
        assert [e.action for e in waiting] == ["agent.create", "agent.update"]

        assert await AuditForwarder(uow, back, batch=1).forward_once() == 1
        assert await AuditForwarder(uow, back, batch=1).forward_once() == 1
        assert await AuditForwarder(uow, back).forward_once() == 0
    finally:
        await away.close()
        await back.close()
        await engine.dispose()
