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
from collections.abc import AsyncIterator, Callable, Sequence

from nexus.policy.v1 import policy_pb2, policy_pb2_grpc

from ._auth import INTERNAL_TOKEN_HEADER
from ._client import InternalClient
from ._follow import RETRY_SECONDS, Follower

__all__ = ["ChangeFeed", "agent_changes"]


class _NotReady(Exception):
    """The stream's first message was a change, not the word that it listens."""


class ChangeFeed(Follower):
    def __init__(
        self,
        name: str,
        channel: str,
        connect: Callable[[], AsyncIterator[str | None]],
        on_notice: Callable[[str, str], None],
        *,
        on_gap: Callable[[], None],
        on_ready: Callable[[], None],
        idle_seconds: float,
        retry_seconds: Sequence[float] = RETRY_SECONDS,
    ) -> None:
        super().__init__(
            f"the {name} change feed",
            on_notice,
            on_gap=on_gap,
            on_ready=on_ready,
            retry_seconds=retry_seconds,
        )
        self._channel = channel
        self._connect = connect
        self._idle = idle_seconds

    async def start(self, *, wait_seconds: float = 0.0) -> None:
        await super().start(wait_seconds=wait_seconds)

    async def _session(self) -> None:
        stream = self._connect()
        try:
            if await self._next(stream) is not None:
                raise _NotReady
            self._heard()
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
