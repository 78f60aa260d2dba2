"""Each service as a process: health, reflection, policy decisions, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from nexus.policy.v1 import policy_pb2, policy_pb2_grpc

from tests.conftest import INTERNAL_TOKEN, service_env
from tests.integration.helpers import ADMIN, expect_error
from tests.support.processes import reap
from tools.devstack import free_port

INTERNAL = (("x-nexus-internal-token", INTERNAL_TOKEN),)


@pytest.fixture
def policy_process(keyring_spec: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    env = {
        **os.environ,
        **service_env("sqlite://", keyring_spec, NEXUS_POLICY_LISTEN=f"127.0.0.1:{port}"),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "nexus_policy"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        while True:
            try:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                break
            except grpc.RpcError:
                assert process.poll() is None and time.monotonic() < deadline, (
                    "policy did not start"
                )
                time.sleep(0.1)
    try:
        yield process, port
    finally:
        reap(process)


async def test_health_needs_no_credential_and_an_internal_service_serves_no_reflection(
    policy_process: tuple[subprocess.Popen[bytes], int],
) -> None:
    _, port = policy_process
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="nexus.policy.v1.PolicyService")
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # Its surface is the other services' business, not a map for whoever reaches the port.
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            _ = [r async for r in stream]
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_policy_decides_scopes_for_internal_callers_only(
    policy_process: tuple[subprocess.Popen[bytes], int],
) -> None:
    _, port = policy_process
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        policy = policy_pb2_grpc.PolicyServiceStub(channel)
        request = policy_pb2.CheckScopesRequest(
            requested_scopes=["crm:contacts:read", "crm:contacts:write"],
            allowed_scopes=["crm:contacts:read"],
        )
        await expect_error(
            policy.CheckScopes(request), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"
        )
        denied = await policy.CheckScopes(request, metadata=INTERNAL)
        assert not denied.allowed and list(denied.denied_scopes) == ["crm:contacts:write"]
        del request.requested_scopes[1]
        allowed = await policy.CheckScopes(request, metadata=INTERNAL)
        assert allowed.allowed and not allowed.denied_scopes
        await expect_error(
            policy.CheckScopes(policy_pb2.CheckScopesRequest(), metadata=INTERNAL),
            grpc.StatusCode.INVALID_ARGUMENT,
            "VALIDATION_FAILED",
        )


def test_sigterm_stops_a_service_gracefully(
    policy_process: tuple[subprocess.Popen[bytes], int],
) -> None:
    process, _ = policy_process
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    assert process.stdout is not None
    assert b"stopping" in process.stdout.read()


async def test_gateway_reports_an_unreachable_broker_as_unavailable(keyring_spec: str) -> None:
    from nexus.broker.v1 import providers_pb2
    from nexus.gateway.v1 import gateway_pb2_grpc
    from nexus_gateway.server import create_gateway
    from nexus_gateway.settings import GatewaySettings

    env = service_env(
        "sqlite://",
        keyring_spec,
        NEXUS_BROKER_TARGET=f"127.0.0.1:{free_port()}",
        NEXUS_UPSTREAM_TIMEOUT_SECONDS="2",
    )
    gateway = create_gateway(GatewaySettings.from_env(env))
    await gateway.server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.server.port}") as channel:
            registry = gateway_pb2_grpc.ProviderServiceStub(channel)
            message = await expect_error(
                registry.ListProviders(providers_pb2.ListProvidersRequest(), metadata=ADMIN),
                grpc.StatusCode.UNAVAILABLE,
                "DEPENDENCY_UNAVAILABLE",
            )
            assert "broker" in message
    finally:
        await gateway.server.stop(0)
        await gateway.close()


def test_a_taken_metrics_port_stops_the_service_before_it_serves(keyring_spec: str) -> None:
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        **service_env(
            "sqlite://",
            keyring_spec,
            NEXUS_POLICY_LISTEN=f"127.0.0.1:{port}",
            NEXUS_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
        ),
    }
    with socket.create_server(("127.0.0.1", metrics_port)):
        process = subprocess.run(
            [sys.executable, "-m", "nexus_policy"], env=env, capture_output=True, timeout=60
        )
    assert process.returncode != 0
    assert b"Address already in use" in process.stderr + process.stdout
    assert b"listening on port" not in process.stderr + process.stdout


def test_a_short_admin_key_stops_the_gateway_before_it_serves(keyring_spec: str) -> None:
    short = "nxa_0123456789abcdef"  # 20 characters
    env = {
        **os.environ,
        **service_env(
            "sqlite://",
            keyring_spec,
            NEXUS_GATEWAY_LISTEN=f"127.0.0.1:{free_port()}",
            NEXUS_ADMIN_API_KEYS=f"ops:{short}",
        ),
    }
    process = subprocess.run(
        [sys.executable, "-m", "nexus_gateway"], env=env, capture_output=True, timeout=60
    )
    said = process.stderr + process.stdout
    assert process.returncode != 0
    assert b"NEXUS_ADMIN_API_KEYS: the key named 'ops' has 20 characters" in said
    assert b"at least 32" in said
    assert short.encode() not in said
