"""Which agent holds a key, remembered so a warm call asks the policy service nothing.

An entry is stored only for a key the policy service accepted, under the
SHA-256 digest of the key (never the key). It is dropped when the policy's
change feed names its agent (disabled, deleted, key rotated, anything else),
and stops at the key's own expiry when a rotation retired it. While the feed
is down nothing is cached and every call asks, as before.

The agent is known only once the policy service answered, so a change heard
while any key is being asked about drops that answer too: it may predate the
change.

A key the policy service refused as unknown is remembered too, for a short
while (``unknown_key_seconds``), so that a client repeating a wrong key, or
spraying them, costs the policy service one lookup per key and interval, not
one per request; calls for one key that arrive while it is being asked about
share that one question. Any agent change forgets every refusal (the change may be
the key that was just made), as does a gap in the feed, and a refusal that
raced a change is not remembered.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from nexus.policy.v1 import agents_pb2, agents_pb2_grpc
from nexus_common import InternalClient, LoadingCache, RemoteError, Unauthenticated

__all__ = ["AgentKeys"]


@dataclass(frozen=True)
class _Holder:
    agent_id: str
    # When the key stops working; None for an agent's current key.
    expires_at: datetime | None


def _now() -> datetime:
    return datetime.now(UTC)


class _Refusals:
    """Digests of refused keys, each with the refusal's message until it lapses."""

    def __init__(self, seconds: float, max_entries: int, clock: Callable[[], float]) -> None:
        self._seconds = seconds
        self._max_entries = max_entries
        self._clock = clock
        self._until: dict[bytes, tuple[float, str]] = {}
        self._enabled = False
        # Bumped by each forgetting: a refusal asked for before it is not kept.
        self.epoch = 0

    def of(self, digest: bytes) -> str | None:
        held = self._until.get(digest)
        if held is None:
            return None
        if held[0] <= self._clock():
            del self._until[digest]
            return None
        return held[1]

    def keep(self, digest: bytes, message: str, epoch: int) -> None:
        if not self._enabled or self._seconds <= 0 or epoch != self.epoch:
            return
        self._until.pop(digest, None)
        if len(self._until) >= self._max_entries:
            # The oldest first; a spray of new keys only pushes out older ones.
            del self._until[next(iter(self._until))]
        self._until[digest] = (self._clock() + self._seconds, message)

    def forget(self) -> None:
        self._until.clear()
        self.epoch += 1

    def suspend(self) -> None:
        self._enabled = False
        self.forget()

    def resume(self) -> None:
        self.forget()
        self._enabled = True


class AgentKeys:
    def __init__(
        self,
        policy: InternalClient,
        max_age_seconds: float,
        *,
        unknown_key_seconds: float,
        clock: Callable[[], datetime] = _now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._agents = agents_pb2_grpc.AgentRegistryServiceStub(policy.channel)
        self._max_entries = 100_000
        # Off until the change feed says it is heard.
        self._cache = LoadingCache[bytes, _Holder](
            max_age_seconds, max_entries=self._max_entries, enabled=False
        )
        self._clock = clock
        self._refusals = _Refusals(unknown_key_seconds, 10_000, monotonic)
        # The digests each agent's entries are under, and those being asked about.
        self._digests: dict[str, set[bytes]] = {}
        self._asking: dict[bytes, int] = {}
        self._indexed = 0
        # The policy call running for each key: callers arriving meanwhile share
        # it, so that a burst of one wrong key costs one lookup too. A change
        # heard forgets them, and whoever asks after it asks again.
        self._in_flight: dict[bytes, asyncio.Future[_Holder]] = {}

    async def agent_of(self, key: str) -> str:
        """The agent holding ``key``; raises the policy service's refusal."""
        digest = hashlib.sha256(key.encode()).digest()
        refused = self._refusals.of(digest)
        if refused is not None:
            raise Unauthenticated(refused)
        holder = await self._cache.get(digest, lambda: self._load(digest, key))
        if holder.expires_at is not None and holder.expires_at <= self._clock():
            # The key ran out while cached: the policy service gives the answer.
            self._cache.invalidate(digest)
            holder = await self._ask(key)
        return holder.agent_id

    async def _load(self, digest: bytes, key: str) -> _Holder:
        self._asking[digest] = self._asking.get(digest, 0) + 1
        try:
            holder = await self._ask_once(digest, key)
        finally:
            left = self._asking.pop(digest) - 1
            if left:
                self._asking[digest] = left
        held = self._digests.setdefault(holder.agent_id, set())
        if digest not in held:
            if self._indexed >= self._max_entries:
                # Entries the cache dropped by age stay named here; start both over.
                self._forget()
                held = self._digests.setdefault(holder.agent_id, set())
            held.add(digest)
            self._indexed += 1
        return holder

    async def _ask_once(self, digest: bytes, key: str) -> _Holder:
        asked = self._in_flight.get(digest)
        if asked is None:
            asked = self._in_flight[digest] = asyncio.ensure_future(
                self._ask_remembering(digest, key, self._refusals.epoch)
            )

            def done(future: asyncio.Future[_Holder]) -> None:
                if self._in_flight.get(digest) is future:
                    del self._in_flight[digest]
                if not future.cancelled():
                    future.exception()  # seen here, when every caller stopped waiting

            asked.add_done_callback(done)
        # Shielded: one caller giving up does not end the call the others wait on.
        return await asyncio.shield(asked)

    async def _ask_remembering(self, digest: bytes, key: str, epoch: int) -> _Holder:
        """The policy's answer; a refusal is remembered before the shared call
        ends, so a caller arriving as it ends finds it rather than asking again."""
        try:
            return await self._ask(key)
        except RemoteError as error:
            if error.reason == Unauthenticated.reason:
                self._refusals.keep(digest, str(error), epoch)
            raise

    def _forget(self) -> None:
        self._digests.clear()
        self._indexed = 0
        self._cache.clear()

    async def _ask(self, key: str) -> _Holder:
        answer = await self._policy.call(
            self._agents.AuthenticateAgent, agents_pb2.AuthenticateAgentRequest(agent_key=key)
        )
        expires_at = (
            answer.key_expire_time.ToDatetime(tzinfo=UTC)
            if answer.HasField("key_expire_time")
            else None
        )
        return _Holder(answer.agent_id, expires_at)

    def changed(self, channel: str, agent_id: str) -> None:
        digests = self._digests.pop(agent_id, set())
        self._indexed -= len(digests)
        self._cache.invalidate(*digests, *self._asking)
        self._refusals.forget()
        self._in_flight.clear()

    def suspend(self) -> None:
        self._cache.suspend()
        self._refusals.suspend()
        self._in_flight.clear()
        self._forget()

    def resume(self) -> None:
        self._cache.resume()
        self._refusals.resume()
        self._in_flight.clear()
        self._forget()
