"""Handing the policy service's audit events to the broker, which keeps the trail.

Events wait in the outbox, written with the change they record. The
forwarder sends the oldest batch and removes it only once the broker has
stored it; the broker skips ids it already holds, so a batch resent after a
crash between the two steps is recorded once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from google.protobuf import struct_pb2, timestamp_pb2
from nexus.broker.v1 import audit_pb2, audit_pb2_grpc
from nexus_common import AuditEvent, InternalClient, utc

from ..adapters.repository import PolicyUnitOfWork
from ..metrics import AUDIT_FORWARDED, AUDIT_OUTBOX_OLDEST_AGE

__all__ = ["AuditForwarder"]

log = logging.getLogger("nexus.audit")


def _message(event: AuditEvent) -> audit_pb2.AuditEvent:
    details = struct_pb2.Struct()
    details.update(event.details)
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(event.event_time)
    return audit_pb2.AuditEvent(
        id=event.id,
        event_time=when,
        actor=event.actor,
        action=event.action,
        resource=event.resource,
        details=details,
    )


class AuditForwarder:
    def __init__(
        self, uow: Callable[[], PolicyUnitOfWork], broker: InternalClient, batch: int = 100
    ) -> None:
        self._uow = uow
        self._broker = broker
        self._stub = audit_pb2_grpc.AuditLogServiceStub(broker.channel)
        self._batch = batch

    async def forward_once(self) -> int:
        """Send the oldest waiting events; returns how many left the outbox."""
        async with self._uow() as uow:
            events = await uow.outbox.oldest(self._batch)
        if not events:
            AUDIT_OUTBOX_OLDEST_AGE.set(0)
            return 0
        AUDIT_OUTBOX_OLDEST_AGE.set((datetime.now(UTC) - utc(events[0].event_time)).total_seconds())
        await self._broker.call(
            self._stub.RecordAuditEvents,
            audit_pb2.RecordAuditEventsRequest(audit_events=[_message(e) for e in events]),
        )
        async with self._uow() as uow:
            await uow.outbox.remove([event.id for event in events])
            await uow.commit()
        AUDIT_FORWARDED.inc(len(events))
        if len(events) < self._batch:
            AUDIT_OUTBOX_OLDEST_AGE.set(0)  # that was all of it
        return len(events)

    async def run(self, interval: float) -> None:
        """Forward until cancelled; while the broker is away, events wait."""
        while True:
            try:
                if await self.forward_once() == self._batch:
                    continue
            except Exception:
                log.exception("handing audit events to the broker failed; will retry")
            await asyncio.sleep(interval)
