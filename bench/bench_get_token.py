"""The hot paths against the floor of a trivial gRPC call: GetToken with an
admin key, GetToken with an agent key (one more hop, to the policy service,
to authenticate the agent), issuing an agent session, and the access decision
alone (the policy service's AuthorizeAccess, which every GetToken now asks).

The stack runs with production's defaults: the agent is explicitly bound.

Starts the dev stack (SQLite, or PostgreSQL with ``--database-url``) in a
temporary directory, connects an api_key provider, registers an agent and a
nexus provider, then times each path and a gRPC health check (the same server
with no work: the floor) in the same run, sequentially and concurrently.
Prints ratios, never absolute targets. With ``--tracing`` it measures again on
a second stack that exports every span over OTLP to a receiver on loopback,
and prints each ratio with export against the same ratio without.

    python bench/bench_get_token.py [--calls 500] [--concurrency 20] [--database-url URL]
                                    [--tracing]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nexus.broker.v1 import connections_pb2, providers_pb2, sessions_pb2
from nexus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from nexus.policy.v1 import agents_pb2, policy_pb2, policy_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.devstack import DEV_PORTS, Stack, free_port


async def _timed(call: Callable[[], Awaitable[object]], calls: int, concurrency: int) -> float:
    """Calls per second."""
    queue = iter(range(calls))

    async def worker() -> None:
        for _ in queue:
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - started)


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
                workspace_id="bench", provider_name="bench-api", return_url="http://127.0.0.1/done"
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
            provider=providers_pb2.Provider(name="bench-ops", auth_type="nexus", scopes=["ops"])
        ),
        metadata=admin,
    )
    bindings = agents_pb2.AgentBindings(providers=["bench-api", "bench-ops"], workspaces=["bench"])
    created = await gateway_pb2_grpc.AgentServiceStub(channel).CreateAgent(
        gateway_pb2.CreateAgentRequest(
            agent=agents_pb2.Agent(
                agent_id="bench-agent", allowed_scopes=["ops"], bindings=bindings
            )
        ),
        metadata=admin,
    )
    return str(created.agent_key)


def _decision(connection_id: str) -> policy_pb2.AccessRequest:
    """What the broker asks the policy service on each GetToken with the agent key."""
    return policy_pb2.AccessRequest(
        action=policy_pb2.AccessRequest.ACTION_GET_TOKEN,
        caller=policy_pb2.Principal(kind=policy_pb2.Principal.KIND_AGENT, id="bench-agent"),
        provider_id="bench-api-id",
        provider_name="bench-api",
        connection=policy_pb2.ConnectionRef(connection_id=connection_id, workspace_id="bench"),
    )


async def _run(stack: Stack, calls: int, concurrency: int, rounds: int) -> dict[str, float]:
    """Each path's median ratio to the floor, by path and concurrency."""
    admin = (("x-api-key", stack.admin_key),)
    internal = (("x-nexus-internal-token", stack.env["NEXUS_INTERNAL_TOKEN"]),)
    async with (
        grpc.aio.insecure_channel(stack.gateway_target) as channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports['policy']}") as policy_channel,
    ):
        connection_id = await _connect(channel, admin)
        agent = (("authorization", f"Bearer {await _agent(channel, admin)}"),)
        tokens = gateway_pb2_grpc.ConnectionServiceStub(channel)
        sessions = gateway_pb2_grpc.SessionServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        policy = policy_pb2_grpc.PolicyServiceStub(policy_channel)
        decision = _decision(connection_id)
        token_request = connections_pb2.GetTokenRequest(connection_id=connection_id)
        session_request = gateway_pb2.CreateAgentSessionRequest(
            session=sessions_pb2.CreateAgentSessionRequest(
                agent_id="bench-agent", provider="bench-ops", scopes=["ops"]
            )
        )
        paths: dict[str, Callable[[], Awaitable[object]]] = {
            "GetToken (admin key)": lambda: tokens.GetToken(token_request, metadata=admin),
            "GetToken (agent key)": lambda: tokens.GetToken(token_request, metadata=agent),
            "CreateAgentSession": lambda: sessions.CreateAgentSession(
                session_request, metadata=agent
            ),
            "AuthorizeAccess alone": lambda: policy.AuthorizeAccess(decision, metadata=internal),
        }

        def floor() -> Awaitable[object]:
            return health.Check(health_pb2.HealthCheckRequest())  # type: ignore[no-any-return]

        for call in paths.values():
            await _timed(call, 50, 5)  # warm up connections and caches
        results: dict[str, float] = {}
        for name, call in paths.items():
            for width in (1, concurrency):
                ratios = []
                for _ in range(rounds):
                    base = await _timed(floor, calls, width)
                    measured = await _timed(call, calls, width)
                    ratios.append(base / measured)
                label = f"{name:<22} concurrency {width:>3}"
                results[label] = statistics.median(ratios)
                print(
                    f"{label}: {results[label]:5.1f}x "
                    f"a trivial gRPC call (median of {rounds} rounds, {calls} calls each)"
                )
    return results


def _measure(args: argparse.Namespace, extra_env: dict[str, str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as data:
        env = {
            "NEXUS_REFRESH_LOOP": "false",
            "NEXUS_LOG_LEVEL": "WARNING",
            "NEXUS_ENVIRONMENT": "production",
            **extra_env,
        }
        if args.database_url:
            env["NEXUS_BROKER_DATABASE_URL"] = args.database_url
            env["NEXUS_POLICY_DATABASE_URL"] = args.database_url
        stack = Stack(Path(data), {name: free_port() for name in DEV_PORTS}, env=env).start()
        try:
            return asyncio.run(_run(stack, args.calls, args.concurrency, args.rounds))
        finally:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default="")
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="also measure with every span exported over OTLP, and print what that costs",
    )
    args = parser.parse_args()
    plain = _measure(args, {})
    if not args.tracing:
        return
    from tests.support.otlp_collector import start_otlp_collector

    with start_otlp_collector() as collector:
        print("\nwith spans exported over OTLP/gRPC to a receiver on loopback:")
        traced = _measure(args, {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint})
        spans = len(collector.spans())
    print(f"\ncost of exporting traces ({spans} spans received), each path against its own floor:")
    for label, ratio in traced.items():
        print(f"{label}: {ratio / plain[label]:5.2f}x the ratio without export")


if __name__ == "__main__":
    main()
