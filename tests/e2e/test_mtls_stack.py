"""The guide's steps through the real Envoy on a stack that runs as deploy/k8s does:
each service a process with its own certificate, mutual TLS on every hop (the
agent's key checked by the policy service, the session by the broker, which asks
the policy service), and TLS from Envoy to the gateway."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.test_rest_sessions import (  # noqa: F401 - fixtures and tests run here too
    guide,
    test_rotating_and_disabling_an_agent_through_envoy,
    test_step_4_crm_agent_gets_a_read_only_session_and_no_write,
)
from tools.devstack import Stack


@pytest.fixture(scope="module")
def stack_tls() -> bool:
    return True


def test_every_service_refuses_plaintext(stack: Stack) -> None:
    for service in ("broker", "policy", "gateway"):
        with grpc.insecure_channel(f"127.0.0.1:{stack.ports[service]}") as channel:
            with pytest.raises(grpc.RpcError) as refused:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=30
                )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, service  # type: ignore[attr-defined]
