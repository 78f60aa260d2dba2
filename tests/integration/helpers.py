"""Helpers for calling Nexus over gRPC in tests."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nexus.broker.v1 import providers_pb2
from nexus_common import sync_url

from tests.conftest import ADMIN_KEY
from tests.support.rotating_provider import RotatingProvider

ADMIN = (("x-api-key", ADMIN_KEY),)


async def expect_error(call: Awaitable[Any], code: grpc.StatusCode, reason: str) -> str:
    """Await a call that must fail; return its message after checking the ErrorInfo."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() == code, error.details()
    status = rpc_status.from_call(error)
    assert status is not None and len(status.details) == 1
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == reason, info
    return str(error.details())


def peek(database_url: str) -> sa.Engine:
    """A plain engine for a test to look at what a service stored. SQLite waits
    for the services' writers as long as they wait for each other."""
    url = sync_url(database_url)
    timeout = {"timeout": 30} if url.startswith("sqlite") else {}
    return sa.create_engine(url, connect_args=timeout)


def rotating(provider: RotatingProvider, client_secret: str = "s3cret") -> providers_pb2.Provider:  # noqa: S107 - the tests' provider
    """The provider ``rotating``, served by ``provider``; a public client when
    ``client_secret`` is empty."""
    return providers_pb2.Provider(
        name="rotating",
        auth_type="oauth2",
        client_id="nexus-client",
        client_secret=client_secret,
        auth_url=f"{provider.url}/authorize",
        token_url=f"{provider.url}/token",
        revocation_url=f"{provider.url}/revoke",
        scopes=["contacts:read"],
    )
