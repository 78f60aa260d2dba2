"""The refresh lease: one broker at a time may spend a connection's refresh token.

A lease is taken with a conditional UPDATE and carries a fence drawn afresh
for each claim; writes made under it are conditional on that fence. Every
provider call made under a lease runs inside a window that closes a quarter
of the lease before it could lapse, and within ``call_seconds`` in all. While
the call runs the lease is renewed, moving the window on; if renewing fails
(the database is unreachable), the window closes anyway and the call is cut
off. So no other broker can claim the lease while this one may still send or
receive with the refresh token it read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from nexus_common import ProviderUnavailable

from ..adapters.rfc6749 import TokenEndpointError
from ..domain.connections import Connection, Lease, TokenSet
from .unit_of_work import BrokerUnitOfWork

__all__ = ["RefreshLeases"]

log = logging.getLogger("nexus.refresh")

T = TypeVar("T")

# How often a waiting broker looks whether the lease is free.
_POLL_SECONDS = 0.1


@dataclass
class RefreshLeases:
    """One broker's leases: claim, renew while a provider call runs, release."""

    uow: Callable[[], BrokerUnitOfWork]
    clock: Callable[[], datetime]
    seconds: float
    # The most one provider call under the lease may take, however often it is renewed.
    call_seconds: float
    broker: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    @property
    def margin(self) -> float:
        """Kept between a call's cut-off and the lease's end: room for clock
        skew between replicas and for the cancelled call to unwind."""
        return self.seconds / 4

    @property
    def wait_seconds(self) -> float:
        """How long another broker may rightly hold a lease: its call, then its write."""
        return self.call_seconds + self.seconds

    async def try_claim(self, uow: BrokerUnitOfWork, connection_id: str) -> Lease | None:
        """Claim within the caller's transaction; None while someone holds the lease."""
        now = self.clock()
        lease = Lease(
            connection_id,
            f"{self.broker}.{uuid.uuid4().hex}",
            now + timedelta(seconds=self.seconds),
        )
        return lease if await uow.connections.claim(lease, now) else None

    async def claim_due(
        self, uow: BrokerUnitOfWork, limit: int
    ) -> list[tuple[Lease, Connection, Callable[[], TokenSet | None]]]:
        """Claim up to ``limit`` due connections within the caller's
        transaction, in one statement: each row's lease carries the same
        fence, drawn afresh for this claim, so every claim of a row still
        carries a fence no earlier claim of it had."""
        now = self.clock()
        until = now + timedelta(seconds=self.seconds)
        fence = f"{self.broker}.{uuid.uuid4().hex}"
        claimed = await uow.connections.claim_due(now, until, fence, limit)
        return [
            (Lease(connection.id, fence, until), connection, tokens)
            for connection, tokens in claimed
        ]

    async def claim(self, connection_id: str) -> Lease:
        """Take the lease, waiting while another refresh holds it."""
        deadline = self.clock() + timedelta(seconds=self.wait_seconds)
        while True:
            async with self.uow() as uow:
                lease = await self.try_claim(uow, connection_id)
                await uow.commit()
            if lease is not None:
                return lease
            if self.clock() >= deadline:
                raise ProviderUnavailable(
                    "another broker is still refreshing this connection; retry"
                )
            await asyncio.sleep(_POLL_SECONDS)

    async def release(self, lease: Lease) -> None:
        """Give the lease back; nothing happens once another claim replaced it.
        Best effort: when the database is unreachable the lease lapses by itself."""
        try:
            async with self.uow() as uow:
                await uow.connections.release(lease)
                await uow.commit()
        except Exception:
            log.warning(
                "could not release the refresh lease of connection %s; it lapses in %s s",
                lease.connection_id,
                self.seconds,
            )

    @contextlib.asynccontextmanager
    async def held(self, connection_id: str) -> AsyncIterator[Lease]:
        """The lease for the duration of a block, released however the block ends."""
        lease = await self.claim(connection_id)
        try:
            yield lease
        finally:
            await self.release(lease)

    async def call(self, lease: Lease, work: Callable[[], Awaitable[T]]) -> T:
        """Run one provider call under ``lease``; it is cut off (a transient
        TokenEndpointError) before the lease could lapse or after call_seconds."""
        loop = asyncio.get_running_loop()
        stop = loop.time() + self.call_seconds
        try:
            async with asyncio.timeout_at(self._cutoff(lease.until, stop)) as window:
                # Renewing starts a quarter of the lease into the call: most calls
                # have ended by then, and so need no task of their own.
                keeper: list[asyncio.Task[None]] = []
                starting = loop.call_later(
                    self.seconds / 4,
                    lambda: keeper.append(asyncio.create_task(self._keep(lease, window, stop))),
                )
                try:
                    return await work()
                finally:
                    starting.cancel()
                    for task in keeper:
                        task.cancel()
                    await asyncio.gather(*keeper, return_exceptions=True)
        except TimeoutError as exc:
            raise TokenEndpointError(
                "the provider did not answer within the refresh deadline", transient=True
            ) from exc

    def _cutoff(self, until: datetime, stop: float) -> float:
        """The loop time at which a call under a lease held until ``until`` must stop."""
        remaining = (until - self.clock()).total_seconds() - self.margin
        return min(stop, asyncio.get_running_loop().time() + remaining)

    async def _keep(self, lease: Lease, window: asyncio.Timeout, stop: float) -> None:
        """Renew the lease every quarter of it while the call runs, moving its
        cut-off along."""
        while True:
            until = self.clock() + timedelta(seconds=self.seconds)
            try:
                async with self.uow() as uow:
                    renewed = await uow.connections.renew(lease, until)
                    await uow.commit()
            except Exception:
                # The cut-off stays where it was, ahead of the lease's end.
                log.warning(
                    "could not renew the refresh lease of connection %s", lease.connection_id
                )
            else:
                if window.expired():
                    return
                if not renewed:
                    log.warning(
                        "the refresh lease of connection %s was taken over; its call is cut off",
                        lease.connection_id,
                    )
                    window.reschedule(asyncio.get_running_loop().time())
                    return
                window.reschedule(self._cutoff(until, stop))
            await asyncio.sleep(self.seconds / 4)
