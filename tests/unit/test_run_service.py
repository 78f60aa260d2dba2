"""Services run their main coroutine on uvloop (``nexus_common.run_service``),
the event loop that measured fastest under grpc.aio."""

from __future__ import annotations

import asyncio

import uvloop
from nexus_common import run_service


def test_a_service_runs_on_uvloop_to_the_end_of_its_main_coroutine() -> None:
    seen: list[object] = []

    async def main() -> None:
        await asyncio.sleep(0)
        seen.append(asyncio.get_running_loop())

    run_service(main())
    assert len(seen) == 1 and isinstance(seen[0], uvloop.Loop)
