"""Engine settings, measured: one short read transaction (a connection by primary
key, as GetToken's release reads it), run back to back on PostgreSQL, with and
without a ping on checkout and with and without prepared statements. Each
variant's rate is given as a ratio of the first's, from the same run, in rounds
that alternate the variants so that a neighbour's load falls on all of them.

    python -m bench.db_engine [--calls 2000] [--rounds 3] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Column, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nexus_common import SqlUnitOfWork, create_engine, sync_url

from tests.support.postgres import fresh_database, postgres_url

metadata = MetaData()
rows = Table(
    "bench_rows", metadata, Column("id", String(36), primary_key=True), Column("v", String)
)


def variants(url: str) -> dict[str, AsyncEngine]:
    async_url = sync_url(url)  # psycopg serves both
    before = {"connect_timeout": 5}
    return {
        "pre_ping, not prepared (before)": create_async_engine(
            async_url, pool_pre_ping=True, connect_args={**before, "prepare_threshold": None}
        ),
        "pre_ping, prepared": create_async_engine(
            async_url, pool_pre_ping=True, connect_args={**before, "prepare_threshold": 2}
        ),
        "no ping, not prepared": create_async_engine(
            async_url, connect_args={**before, "prepare_threshold": None}
        ),
        "create_engine (no ping, prepared)": create_engine(url),
    }


async def rate(engine: AsyncEngine, calls: int) -> float:
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    statement = select(rows).where(rows.c.id == "row-7")
    started = time.perf_counter()
    for _ in range(calls):
        async with SqlUnitOfWork(sessions) as uow:
            (await uow.session.execute(statement)).one()
    return calls / (time.perf_counter() - started)


async def run(url: str, calls: int, rounds: int) -> dict[str, Any]:
    engines = variants(url)
    async with next(iter(engines.values())).begin() as db:
        await db.run_sync(metadata.create_all)
        await db.execute(rows.insert(), [{"id": f"row-{i}", "v": "x" * 64} for i in range(100)])
    results: dict[str, list[float]] = {name: [] for name in engines}
    for engine in engines.values():
        await rate(engine, 200)  # warm: pool filled, statements prepared
    for _ in range(rounds):
        for name, engine in engines.items():
            results[name].append(await rate(engine, calls))
    for engine in engines.values():
        await engine.dispose()
    first = statistics.median(next(iter(results.values())))
    return {
        name: {"per_second": statistics.median(r), "ratio": statistics.median(r) / first}
        for name, r in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    url, drop = fresh_database(args.database_url or postgres_url())
    try:
        report = asyncio.run(run(url, args.calls, args.rounds))
    finally:
        drop()
    for name, figures in report.items():
        print(f"{name:<36} {figures['per_second']:7.0f}/s  {figures['ratio']:.2f}x")


if __name__ == "__main__":
    main()
