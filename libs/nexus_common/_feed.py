"""Hearing another service's change notices over a stream that reconnects.

A service without the database's notices (the gateway, the broker for the
policy's agents) follows a change feed instead: a server stream from a
service that does hear them. ``ChangeFeed`` keeps one such stream open and
has ``ChangeListener``'s contract: ``on_notice(channel, payload)`` per change,
``on_gap()`` as soon as changes could go unheard, ``on_ready()`` once they are
heard again, so the caches it feeds are off in between.

It knows nothing of the stream's messages: ``connect()`` opens one and yields
``None`` first, when the far end is listening, then a payload per change, or
``None`` again as a heartbeat while nothing changes. A stream that ends, fails,
or stays silent longer than ``idle_seconds`` (a peer that vanished without
closing its connection) is a gap, and is opened again after a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence

from nexus.policy.v1 import policy_pb2, policy_pb2_grpc

from ._auth import INTERNAL_TOKEN_HEADER
from ._client import InternalClient

__all__ = ["ChangeFeed", "agent_changes"]

log = logging.getLogger("nexus.feed")

_RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)


class _NotReady(Exception):
    """The stream's first message was a change, not the word that it listens."""


class ChangeFeed:
    def __init__(
        self,
        name: str,
        channel: str,
        connect: Callable[[], AsyncIterator[str | None]],
        on_notice: Callable[[str, str], None],
        *,
        on_gap: Callable[[], None],
        on_ready: Callable[[], None],
        idle_seconds: float = 15.0,
        retry_seconds: Sequence[float] = _RETRY_SECONDS,
    ) -> None:
        self._name = name
        self._channel = channel
        self._connect = connect
        self._on_notice = on_notice
        self._on_gap = on_gap
        self._on_ready = on_ready
        self._idle = idle_seconds
        self._retry = tuple(retry_seconds)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def start(self, *, wait_seconds: float = 0.0) -> None:
        """Start following; wait up to ``wait_seconds`` for the first ready,
        serving uncached meanwhile if the far end is not up yet. Idempotent."""
        if self._task is not None:
            return
        self._on_gap()
        self._task = asyncio.create_task(self._run(), name=f"change-feed-{self._name}")
        if wait_seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait_seconds)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._follow()
                log.warning("the %s change feed ended; caches off until it is back", self._name)
            except Exception as exc:
                # Only the kind: a status message is the peer's text.
                log.warning(
                    "the %s change feed was lost (%s); caches off until it is back",
                    self._name,
                    type(exc).__name__,
                )
            finally:
                if self._ready.is_set():
                    self._ready.clear()
                    self._on_gap()
                    failures = 0
            delay = self._retry[min(failures, len(self._retry) - 1)]
            # Jitter, so the replicas of a service do not all reconnect at once.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - not a secret
            failures += 1

    async def _follow(self) -> None:
        stream = self._connect()
        try:
            if await self._next(stream) is not None:
                raise _NotReady
            self._ready.set()
            self._on_ready()
            while True:
                payload = await self._next(stream)
                if payload is not None:
                    self._on_notice(self._channel, payload)
        except StopAsyncIteration:
            return
        finally:
            # Closing the iterator cancels the call it holds.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _next(self, stream: AsyncIterator[str | None]) -> str | None:
        async with asyncio.timeout(self._idle):
            return await anext(stream)


def agent_changes(policy: InternalClient, token: str) -> Callable[[], AsyncIterator[str | None]]:
    """Opens the policy service's feed of agent changes, as ``ChangeFeed`` reads
    it: the gateway and the broker both follow it."""
    stub = policy_pb2_grpc.PolicyServiceStub(policy.channel)

    async def watch() -> AsyncIterator[str | None]:
        call = stub.WatchAgentChanges(
            policy_pb2.WatchAgentChangesRequest(), metadata=((INTERNAL_TOKEN_HEADER, token),)
        )
        try:
            async for notice in call:
                yield notice.agent_id or None
        finally:
            call.cancel()

    return watch
