"""A PostgreSQL outage under load, made real: the services reach PostgreSQL
through a loopback TCP proxy that the test cuts for 5 seconds while
concurrent GetToken calls run over gRPC. Every call ends OK or UNAVAILABLE
(reason DATABASE_UNAVAILABLE, with a RetryInfo), never INTERNAL or UNKNOWN,
and the same services serve again once PostgreSQL is back."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
import sqlalchemy as sa
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nexus_common import (
    BatchInsert,
    DatabaseUnavailable,
    SqlUnitOfWork,
    create_engine,
    retry_stale,
)
from sqlalchemy.ext.asyncio import async_sessionmaker

from tests.conftest import Services
from tests.integration.test_connections import connect, token
from tests.support.app_server import AppServer
from tests.support.oidc_server import OidcServer
from tests.support.postgres import fresh_database, postgres_url
from tests.support.tcp_proxy import TcpProxy

OUTAGE_SECONDS = 5.0
WORKERS = 16


@pytest.fixture(scope="module")
def proxy() -> Iterator[TcpProxy]:
    upstream = urlsplit(postgres_url())
    with TcpProxy(upstream.hostname or "127.0.0.1", upstream.port or 5432) as running:
        yield running


@pytest.fixture
def database_url(proxy: TcpProxy) -> Iterator[str]:
    """A fresh PostgreSQL database, reached through the proxy."""
    url, drop = fresh_database(postgres_url())
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    via_proxy = (
        f"{credentials}@127.0.0.1:{proxy.port}" if credentials else f"127.0.0.1:{proxy.port}"
    )
    try:
        yield urlunsplit(parts._replace(netloc=via_proxy))
    finally:
        proxy.restore()
        drop()


def _outcome(error: grpc.aio.AioRpcError) -> str:
    """The status code, and for UNAVAILABLE the reason and whether it says when to retry."""
    code = error.code().name
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return code
    status = rpc_status.from_call(error)
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    details = list(status.details) if status is not None else []
    has_info = any(d.Unpack(info) for d in details)
    has_retry = any(d.Unpack(retry) for d in details)
    return f"{code}/{info.reason if has_info else '-'}/{'retry' if has_retry else 'no-retry'}"


async def _hammer(services: Services, connection_id: str, until: float, seen: Counter[str]) -> None:
    while time.monotonic() < until:
        try:
            await token(services, connection_id)
            seen["OK"] += 1
        except grpc.aio.AioRpcError as error:
            seen[_outcome(error)] += 1
            await asyncio.sleep(0.02)  # as a client honouring the retry hint would, briefly


async def test_a_postgres_outage_under_load_is_unavailable_and_passes(
    services: Services, idp: OidcServer, app: AppServer, proxy: TcpProxy
) -> None:
    connection_id = await connect(services, idp, app)
    assert (await token(services, connection_id)).credentials["access_token"]

    during: Counter[str] = Counter()
    load_ends = time.monotonic() + 1.0 + OUTAGE_SECONDS + 1.0
    workers = [
        asyncio.create_task(_hammer(services, connection_id, load_ends, during))
        for _ in range(WORKERS)
    ]
    await asyncio.sleep(1.0)
    proxy.cut()
    await asyncio.sleep(OUTAGE_SECONDS)
    proxy.restore()
    await asyncio.gather(*workers)

    assert during["OK"] > 0, during
    assert during["UNAVAILABLE/DATABASE_UNAVAILABLE/retry"] > 0, during
    assert set(during) <= {"OK", "UNAVAILABLE/DATABASE_UNAVAILABLE/retry"}, during

    # The same services, never restarted, serve every call again.
    deadline = time.monotonic() + 10
    while True:
        after: Counter[str] = Counter()
        await asyncio.gather(
            *(_hammer(services, connection_id, time.monotonic() + 0.5, after) for _ in range(4))
        )
        if set(after) == {"OK"} or time.monotonic() > deadline:
            break
    assert set(after) == {"OK"}, (during, after)


async def test_a_connection_dropped_in_the_pool_is_retried_once_on_a_fresh_one(
    database_url: str, proxy: TcpProxy
) -> None:
    """What a restart of PostgreSQL leaves behind: pooled connections that
    the server has closed. A read that meets one runs once more, on a fresh one."""
    engine = create_engine(database_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    attempts = 0

    async def read() -> int:
        nonlocal attempts
        attempts += 1
        async with SqlUnitOfWork(sessions) as uow:
            await uow.session.execute(sa.text("SELECT 1"))  # checked out (no ping), in use
            if attempts == 1:
                proxy.cut()
                await asyncio.sleep(0.2)
                proxy.restore()
            return int((await uow.session.execute(sa.text("SELECT 2"))).scalar_one())

    try:
        assert await retry_stale(read) == 2
        assert attempts == 2
        # Without the retry, the caller would see the fault, as UNAVAILABLE.
        attempts = 0
        with pytest.raises(DatabaseUnavailable) as caught:
            await read()
        assert caught.value.stale and caught.value.retry_after_seconds == 1.0
    finally:
        await engine.dispose()


@pytest.mark.parametrize("rows", [1, 3], ids=["one row, committing itself", "a batch"])
async def test_a_batch_insert_meeting_a_dropped_pooled_connection_runs_once_more(
    database_url: str, proxy: TcpProxy, rows: int
) -> None:
    """Group commits insert through ``BatchInsert``, outside any unit of work:
    after a restart of PostgreSQL, their first insert on a pooled connection
    the server closed runs once more on a fresh one, and each row is stored once."""
    engine = create_engine(database_url)
    table = sa.Table("batch_rows", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    insert = BatchInsert(engine)

    async def stored() -> list[int]:
        async with engine.connect() as connection:
            return list((await connection.execute(sa.select(table.c.id))).scalars())

    try:
        async with engine.begin() as connection:
            await connection.run_sync(table.metadata.create_all)
        await insert((table, [{"id": 0}]))  # leaves its connection in the pool
        proxy.cut()
        await asyncio.sleep(0.2)
        proxy.restore()
        await insert((table, [{"id": n} for n in range(1, rows + 1)]))
        assert sorted(await stored()) == list(range(rows + 1))
        # With nothing to reach, the caller sees the fault as UNAVAILABLE, and no row is stored.
        proxy.cut()
        with pytest.raises(DatabaseUnavailable):
            await insert((table, [{"id": 100 + n} for n in range(rows)]))
        proxy.restore()
        assert sorted(await stored()) == list(range(rows + 1))
    finally:
        await engine.dispose()
