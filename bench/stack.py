"""The stack the bench loads: the dev stack on a fresh PostgreSQL database, with
production's defaults (agents explicitly bound), an api_key connection, a nexus
provider, a bound agent and a real backend behind ``BACKEND_AUTH_URL``."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from nexus.broker.v1 import connections_pb2, providers_pb2
from nexus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from nexus.policy.v1 import agents_pb2, policy_pb2

from tests.support.backend_auth_server import BackendAuthServer, start_backend_auth_server
from tests.support.postgres import fresh_database, postgres_url
from tools.devstack import DEV_PORTS, Stack, free_port

__all__ = ["AGENT_ID", "Setup", "access_request", "running_stack", "set_up"]

AGENT_ID = "bench-agent"
WORKSPACE = "bench"
OPS_SCOPE = "ops"


@dataclass(frozen=True)
class Setup:
    connection_id: str
    agent_key: str
    user_token: str  # the backend's token for a user, for on-behalf-of sessions


async def _connect(channel: grpc.aio.Channel, admin: tuple[tuple[str, str], ...]) -> str:
    params = providers_pb2.Provider(name="bench-api", auth_type="api_key")
    params.params.update({"credential_schema": {"fields": [{"name": "api_key"}]}})
    await gateway_pb2_grpc.ProviderServiceStub(channel).CreateProvider(
        gateway_pb2.CreateProviderRequest(provider=params), metadata=admin
    )
    stub = gateway_pb2_grpc.ConnectionServiceStub(channel)
    started = await stub.RequestConnection(
        gateway_pb2.RequestConnectionRequest(
            connection=connections_pb2.RequestConnectionRequest(
                workspace_id=WORKSPACE,
                provider_name="bench-api",
                return_url="http://127.0.0.1/done",
            )
        ),
        metadata=admin,
    )
    await stub.CaptureCredentials(
        gateway_pb2.CaptureCredentialsRequest(
            capture=connections_pb2.CaptureCredentialsRequest(
                state=started.state, credentials={"api_key": "k"}
            )
        ),
        metadata=admin,
    )
    return str(started.connection_id)


async def _agent(channel: grpc.aio.Channel, admin: tuple[tuple[str, str], ...]) -> str:
    """Register a nexus provider and an agent allowed its scope; return the agent's key."""
    await gateway_pb2_grpc.ProviderServiceStub(channel).CreateProvider(
        gateway_pb2.CreateProviderRequest(
            provider=providers_pb2.Provider(name="bench-ops", auth_type="nexus", scopes=[OPS_SCOPE])
        ),
        metadata=admin,
    )
    bindings = agents_pb2.AgentBindings(
        providers=["bench-api", "bench-ops"], workspaces=[WORKSPACE]
    )
    created = await gateway_pb2_grpc.AgentServiceStub(channel).CreateAgent(
        gateway_pb2.CreateAgentRequest(
            agent=agents_pb2.Agent(agent_id=AGENT_ID, allowed_scopes=[OPS_SCOPE], bindings=bindings)
        ),
        metadata=admin,
    )
    return str(created.agent_key)


def access_request(connection_id: str) -> policy_pb2.AccessRequest:
    """What the broker asks the policy service on each GetToken with the agent key."""
    return policy_pb2.AccessRequest(
        action=policy_pb2.AccessRequest.ACTION_GET_TOKEN,
        caller=policy_pb2.Principal(kind=policy_pb2.Principal.KIND_AGENT, id=AGENT_ID),
        provider_id="bench-api-id",
        provider_name="bench-api",
        connection=policy_pb2.ConnectionRef(connection_id=connection_id, workspace_id=WORKSPACE),
    )


async def set_up(stack: Stack, backend: BackendAuthServer) -> Setup:
    admin = (("x-api-key", stack.admin_key),)
    async with grpc.aio.insecure_channel(stack.gateway_target) as channel:
        connection_id = await _connect(channel, admin)
        agent_key = await _agent(channel, admin)
    # Valid for longer than any run: the policy service caches the backend's answer
    # (NEXUS_BACKEND_AUTH_CACHE_SECONDS) as it would for a user's repeated requests.
    user_token = backend.issue_token("bench-user", permissions=[OPS_SCOPE], expires_in=3600)
    return Setup(connection_id, agent_key, user_token)


@contextlib.contextmanager
def running_stack(
    extra_env: Mapping[str, str], database_url: str = ""
) -> Iterator[tuple[Stack, BackendAuthServer]]:
    """The dev stack on a fresh database of ``database_url``'s server (by default
    DATABASE_URL, else 127.0.0.1:5432 as user postgres, as the tests find one)."""
    url, drop = fresh_database(database_url or postgres_url())
    try:
        with start_backend_auth_server() as backend, tempfile.TemporaryDirectory() as data:
            env = {
                "NEXUS_BROKER_DATABASE_URL": url,
                "NEXUS_POLICY_DATABASE_URL": url,
                "NEXUS_REFRESH_LOOP": "false",
                "NEXUS_LOG_LEVEL": "WARNING",
                "NEXUS_ENVIRONMENT": "production",
                "BACKEND_AUTH_URL": backend.url,
                **extra_env,
            }
            # Envoy's rate limits off: the bench loads one address and one key past them.
            ports = {name: free_port() for name in DEV_PORTS}
            stack = Stack(Path(data), ports, env=env, rate_limited=False).start()
            try:
                yield stack, backend
            finally:
                stack.stop()
    finally:
        drop()
