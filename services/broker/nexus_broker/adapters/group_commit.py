"""Group commit: many callers' rows, one INSERT and one commit.

A release's audit row must be durable before its credential goes out, and a
session's row (with its audit row) before its token does. Giving each its own
transaction costs several round trips per call; here callers queue their rows
and one flusher writes everything queued so far in one statement per table and
one commit, then tells each caller. While a flush runs,
the next callers queue up, so batches grow with load and a lone caller waits
for no timer.

- Durable before the answer: ``record`` returns only once its row is committed.
  If the commit fails, every caller in that batch gets the error, and so fails
  its request: nothing is fire-and-forget.
- Bounded: at most ``max_batch`` rows wait in the queue (and as many in the
  flush under way); a caller finding it full waits for room. Nothing is dropped.
- ``close`` flushes what is queued before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from nexus_common import DatabaseUnavailable, Internal

__all__ = ["GroupCommit"]

log = logging.getLogger("nexus.audit")

T = TypeVar("T")
# Stores its items in one transaction and says, per item, whether it was
# stored (a conditional write may skip one), or raises.
Write = Callable[[list[T]], Awaitable[list[bool]]]


@dataclass(frozen=True)
class _Queued(Generic[T]):
    item: T
    stored: asyncio.Future[bool]


class GroupCommit(Generic[T]):
    def __init__(self, write: Write[T], max_batch: int, *, name: str) -> None:
        """``write`` stores a batch in one transaction (see ``Write``)."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write = write
        self._max = max_batch
        self._queue: asyncio.Queue[_Queued[T]] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self._name = name

    async def record(self, item: T) -> bool:
        """Whether ``item`` was stored, once its batch is committed; raise if
        the commit failed."""
        if self._closed:
            # Shutting down: no flusher any more, so the row goes in on its own.
            (stored,) = await self._write([item])
            return stored
        queue = self._running()
        queued = _Queued(item, asyncio.get_running_loop().create_future())
        await queue.put(queued)  # waits while the queue is full
        return await queued.stored

    def _running(self) -> asyncio.Queue[_Queued[T]]:
        if self._queue is None:
            self._queue = asyncio.Queue(self._max)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(
                self._run(self._queue), name=f"{self._name}-flusher"
            )
        return self._queue

    async def _run(self, queue: asyncio.Queue[_Queued[T]]) -> None:
        while True:
            batch: list[_Queued[T]] = [await queue.get()]
            while len(batch) < self._max and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._flush(batch)
            finally:
                for _ in batch:
                    queue.task_done()

    async def _flush(self, batch: list[_Queued[T]]) -> None:
        try:
            results = await self._write([queued.item for queued in batch])
        except asyncio.CancelledError:
            # Stopped mid-flush (the loop is ending): nobody may take the
            # rows for stored, and nobody may wait for ever.
            for queued in batch:
                if not queued.stored.done():
                    queued.stored.set_exception(
                        DatabaseUnavailable("the record may not be stored; try again")
                    )
            raise
        except Exception as exc:
            if not isinstance(exc, DatabaseUnavailable):
                log.exception("writing %d %s rows failed", len(batch), self._name)
            for queued in batch:
                if not queued.stored.done():
                    queued.stored.set_exception(_failure(exc))
            return
        for queued, stored in zip(batch, results, strict=True):
            if not queued.stored.done():
                queued.stored.set_result(stored)

    async def close(self) -> None:
        """Flush what is queued, then stop; later rows are written one by one."""
        self._closed = True
        if self._queue is not None and self._flusher is not None and not self._flusher.done():
            await self._queue.join()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None


def _failure(exc: Exception) -> Exception:
    """One error per caller (an exception raised in many tasks at once would
    collect all their tracebacks), chained to the cause."""
    error: Exception
    if isinstance(exc, DatabaseUnavailable):
        error = DatabaseUnavailable("the database is unavailable; try again shortly")
    else:
        error = Internal("the record could not be stored")
    error.__cause__ = exc
    return error
