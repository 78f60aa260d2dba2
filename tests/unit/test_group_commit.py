"""The group commit of release audit rows, against an in-memory store: callers
return only once their batch is stored, a failed batch fails each of its
callers, the queue is bounded, and closing writes what is queued."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from nexus_broker.adapters.group_commit import GroupCommit
from nexus_common import AuditEvent, DatabaseUnavailable, Internal


class Store:
    """Stands for the database: each write is one transaction of a batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.writing = 0

    async def write(self, events: list[AuditEvent]) -> list[bool]:
        self.writing += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail is not None:
                raise self.fail
            self.batches.append([event.resource for event in events])
            # An odd-numbered resource stands for a row a conditional write skipped.
            return [not event.resource.endswith(("1", "3", "5", "7", "9")) for event in events]
        finally:
            self.writing -= 1

    @property
    def stored(self) -> list[str]:
        return [resource for batch in self.batches for resource in batch]


def event(n: int) -> AuditEvent:
    return AuditEvent("tests", "token.release", f"connections/{n}", datetime.now(UTC))


async def test_a_caller_returns_only_once_its_row_is_stored() -> None:
    store = Store()
    store.gate = asyncio.Event()
    batcher = GroupCommit(store.write, max_batch=8, name="audit")
    call = asyncio.create_task(batcher.record(event(1)))
    await asyncio.sleep(0.01)
    assert not call.done() and store.stored == []
    store.gate.set()
    await call
    assert store.stored == ["connections/1"]
    await batcher.close()


async def test_rows_queued_during_a_flush_share_the_next_commit() -> None:
    store = Store()
    store.gate = asyncio.Event()
    batcher = GroupCommit(store.write, max_batch=64, name="audit")
    first = asyncio.create_task(batcher.record(event(0)))
    await asyncio.sleep(0.01)  # the first flush holds row 0
    rest = [asyncio.create_task(batcher.record(event(n))) for n in range(1, 21)]
    await asyncio.sleep(0.01)
    store.gate.set()
    await asyncio.gather(first, *rest)
    assert store.batches == [["connections/0"], [f"connections/{n}" for n in range(1, 21)]]
    await batcher.close()


async def test_a_failed_commit_fails_every_caller_of_its_batch() -> None:
    store = Store()
    store.gate = asyncio.Event()
    store.fail = DatabaseUnavailable("the database is unavailable; try again shortly")
    batcher = GroupCommit(store.write, max_batch=64, name="audit")
    calls = [asyncio.create_task(batcher.record(event(n))) for n in range(5)]
    await asyncio.sleep(0.01)
    store.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, DatabaseUnavailable) for r in results)
    assert len({id(r) for r in results}) == len(results)  # one error each
    assert store.stored == []

    # An unforeseen fault fails them too, as INTERNAL, without its text.
    store.fail = RuntimeError("secret-looking detail")
    with pytest.raises(Internal) as caught:
        await batcher.record(event(9))
    assert "secret" not in str(caught.value)

    store.fail = None
    await batcher.record(event(10))
    assert store.stored == ["connections/10"]
    await batcher.close()


async def test_the_queue_is_bounded_and_full_callers_wait() -> None:
    store = Store()
    store.gate = asyncio.Event()
    batcher = GroupCommit(store.write, max_batch=4, name="audit")
    calls = [asyncio.create_task(batcher.record(event(n))) for n in range(20)]
    await asyncio.sleep(0.01)
    # One batch is being written, at most four rows wait; the rest wait for room.
    assert store.writing == 1
    assert batcher._queue is not None and batcher._queue.qsize() == 4
    assert not any(call.done() for call in calls)
    store.gate.set()
    await asyncio.gather(*calls)
    assert sorted(store.stored) == sorted(f"connections/{n}" for n in range(20))
    assert max(len(batch) for batch in store.batches) <= 4
    await batcher.close()


async def test_closing_writes_what_is_queued() -> None:
    store = Store()
    store.gate = asyncio.Event()
    batcher = GroupCommit(store.write, max_batch=4, name="audit")
    calls = [asyncio.create_task(batcher.record(event(n))) for n in range(6)]
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.01)
    assert not closing.done()
    store.gate.set()
    await closing
    await asyncio.gather(*calls)
    assert sorted(store.stored) == sorted(f"connections/{n}" for n in range(6))
    # After closing, a row is still written, on its own.
    await batcher.record(event(7))
    assert store.batches[-1] == ["connections/7"]


async def test_each_caller_learns_whether_its_own_item_was_stored() -> None:
    store = Store()
    batcher = GroupCommit(store.write, max_batch=8, name="outcome")
    results = await asyncio.gather(*(batcher.record(event(n)) for n in range(6)))
    assert results == [True, False, True, False, True, False]
    assert len(store.batches) < 6
    await batcher.close()
