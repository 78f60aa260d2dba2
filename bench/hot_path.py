"""``make bench``: the hot paths loaded as users load a server, each figure a ratio of
the floor measured in the same run.

The load comes from a C generator, ``h2load``: framed protobuf requests over one HTTP/2
connection with 1, 16 or 64 streams in flight (gRPC), or 1, 16 or 64 HTTP/1.1 connections
through Envoy (REST), each point a fixed number of requests sized to last about
``--seconds`` after a warm-up. The floor is a trivial ``grpc.aio`` server in
its own process (``bench.echo_server``), loaded with the very same request just before
each point, and for REST the same Envoy config routing to it. The stack runs on a fresh
PostgreSQL database with production's defaults, metrics served and every span exported
over OTLP to a receiver on loopback.

A run counts only when every answer was OK: h2load's HTTP statuses, and the services'
own ``grpc_server_handled_total`` read before and after the measured requests (a gRPC
error is a trailer after HTTP 200). Otherwise it is NOT A RESULT and the bench exits 1.

    python -m bench.hot_path [--seconds 5] [--in-flight 1,16,64] [--json PATH]
                             [--database-url URL] [--no-tracing-cost]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nexus.broker.v1 import connections_pb2, sessions_pb2
from nexus.gateway.v1 import gateway_pb2

from bench.floor import Floor, running_floor
from bench.loadgen import Load, grpc_frame, h2load, need
from bench.metrics import Handled, scrape
from bench.stack import AGENT_ID, OPS_SCOPE, Setup, access_request, running_stack, set_up
from tests.support.otlp_collector import start_otlp_collector
from tools.devstack import Stack

GRPC = "grpc"
REST = "rest"
_SERVICES = ("gateway", "broker", "policy")


@dataclass(frozen=True)
class Probe:
    """One path: what to send, where, and which server-side count must grow by it."""

    name: str
    kind: str  # GRPC or REST
    path: str  # the gRPC method path, or the REST URL path
    headers: dict[str, str]
    counted: tuple[str, str]  # (grpc_service, grpc_method) answering it in the stack
    body: bytes = b""
    port: str = "gateway"  # the stack's port it is sent to (gRPC)


@dataclass
class Point:
    probe: str
    in_flight: int
    load: Load
    floor: Load
    non_ok: int
    ok_answers: int
    problems: list[str] = field(default_factory=list)

    def ratios(self) -> dict[str, float]:
        def ratio(mine: float, floor: float) -> float:
            return round(mine / floor, 4) if floor else 0.0

        return {
            "throughput": ratio(self.load.per_second, self.floor.per_second),
            "mean_latency": ratio(self.load.mean_ms, self.floor.mean_ms),
            "p99_latency": ratio(self.load.p99_ms, self.floor.p99_ms),
        }

    def floor_line(self) -> str:
        return (
            f"{'  its floor':<26} {self.in_flight:>9} {self.floor.per_second:>9.0f} {'':>8} "
            f"{self.floor.mean_ms:>8.2f} {'':>8} {self.floor.p99_ms:>8.2f}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.probe,
            "in_flight": self.in_flight,
            "result": not self.problems,
            "problems": self.problems,
            "ratios_of_floor": self.ratios(),
            "measured": self.load.as_dict(),
            "floor": self.floor.as_dict(),
            "non_ok_answers": self.non_ok,
            "ok_answers_counted_by_service": self.ok_answers,
        }


def _grpc_headers(extra: dict[str, str]) -> dict[str, str]:
    return {"content-type": "application/grpc", "te": "trailers", **extra}


def probes(stack: Stack, setup: Setup) -> list[Probe]:
    admin = {"x-api-key": stack.admin_key}
    agent = {"authorization": f"Bearer {setup.agent_key}"}
    internal = {"x-nexus-internal-token": stack.env["NEXUS_INTERNAL_TOKEN"]}
    get_token = connections_pb2.GetTokenRequest(connection_id=setup.connection_id)
    agent_session = gateway_pb2.CreateAgentSessionRequest(
        session=sessions_pb2.CreateAgentSessionRequest(
            agent_id=AGENT_ID, provider="bench-ops", scopes=[OPS_SCOPE]
        )
    )
    obo_session = gateway_pb2.CreateOboSessionRequest(
        session=sessions_pb2.CreateOboSessionRequest(
            agent_id=AGENT_ID,
            provider="bench-ops",
            scopes=[OPS_SCOPE],
            user_context_token=setup.user_token,
        )
    )
    connections = "nexus.gateway.v1.ConnectionService"
    sessions = "nexus.gateway.v1.SessionService"
    policy = "nexus.policy.v1.PolicyService"
    token_rest = f"/v1/token/{setup.connection_id}"

    def grpc_probe(
        name: str, service: str, method: str, body: bytes, headers: dict[str, str], port: str
    ) -> Probe:
        return Probe(
            name,
            GRPC,
            f"/{service}/{method}",
            _grpc_headers(headers),
            (service, method),
            body,
            port,
        )

    return [
        grpc_probe(
            "GetToken, admin key",
            connections,
            "GetToken",
            get_token.SerializeToString(),
            admin,
            "gateway",
        ),
        grpc_probe(
            "GetToken, agent key",
            connections,
            "GetToken",
            get_token.SerializeToString(),
            agent,
            "gateway",
        ),
        Probe("GetToken REST, admin key", REST, token_rest, admin, (connections, "GetToken")),
        Probe("GetToken REST, agent key", REST, token_rest, agent, (connections, "GetToken")),
        grpc_probe(
            "CreateAgentSession",
            sessions,
            "CreateAgentSession",
            agent_session.SerializeToString(),
            agent,
            "gateway",
        ),
        grpc_probe(
            "CreateOboSession",
            sessions,
            "CreateOboSession",
            obo_session.SerializeToString(),
            agent,
            "gateway",
        ),
        grpc_probe(
            "AuthorizeAccess alone",
            policy,
            "AuthorizeAccess",
            access_request(setup.connection_id).SerializeToString(),
            internal,
            "policy",
        ),
    ]


@dataclass(frozen=True)
class Settings:
    seconds: float
    warm_up: float
    widths: tuple[int, ...]


def _load(
    probe: Probe, base_url: str, width: int, settings: Settings, measuring: Callable[[], None]
) -> Load:
    """Warm up (unmeasured, and sizing the run from the rate seen), call ``measuring``,
    then send about ``settings.seconds`` worth of requests."""
    url = base_url + probe.path
    if probe.kind == GRPC:
        shape: dict[str, Any] = {"body": grpc_frame(probe.body), "streams": width}
    else:
        shape = {"connections": width, "h1": True}
    warm = h2load(url, probe.headers, max(4 * width, 32), **shape)
    if warm.failed == 0:  # a failing path fails again below, where it is reported
        warm = h2load(url, probe.headers, _count(warm, settings.warm_up, width), **shape)
    measuring()
    return h2load(url, probe.headers, _count(warm, settings.seconds, width), **shape)


def _count(rate: Load, seconds: float, width: int) -> int:
    return max(4 * width, 32, round(rate.per_second * seconds))


def _point(probe: Probe, stack: Stack, floor: Load, width: int, settings: Settings) -> Point:
    metrics = [stack.metrics_url(service) for service in _SERVICES]
    base = stack.rest_url if probe.kind == REST else f"http://127.0.0.1:{stack.ports[probe.port]}"
    before: Handled = Counter()
    load = _load(probe, base, width, settings, lambda: before.update(scrape(metrics)))
    answered = scrape(metrics)
    answered.subtract(before)
    non_ok = sum(count for (_, _, code), count in answered.items() if code != "OK")
    ok = answered[(*probe.counted, "OK")]
    point = Point(probe.name, width, load, floor, non_ok, ok)
    if load.failed:
        point.problems.append(f"{load.failed} requests failed at the HTTP level")
    if non_ok:
        failing = {key: n for key, n in answered.items() if key[2] != "OK" and n}
        point.problems.append(f"{non_ok} non-OK gRPC answers: {failing}")
    if ok < load.requests:
        point.problems.append(f"the service counted {ok} OK answers for {load.requests} requests")
    if not load.requests:
        point.problems.append("no request completed")
    return point


def _floor(probe: Probe, floor: Floor, width: int, settings: Settings) -> Load:
    """The floor loaded with this very request, just before the path: background load on
    the machine then weighs on both sides of the ratio alike."""
    base = floor.rest_url if probe.kind == REST else floor.grpc_url
    load = _load(probe, base, width, settings, lambda: None)
    if load.failed or not load.requests:
        raise RuntimeError(f"the floor itself failed ({probe.name}, {width} in flight): {load}")
    return load


def measure(
    stack: Stack,
    setup: Setup,
    settings: Settings,
    only: Callable[[Probe], bool],
    report: Callable[[Point], None],
) -> list[Point]:
    points = []
    with running_floor() as floor:
        for probe in filter(only, probes(stack, setup)):
            for width in settings.widths:
                base = _floor(probe, floor, width, settings)
                point = _point(probe, stack, base, width, settings)
                report(point)
                points.append(point)
    return points


def _print_header() -> None:
    print(
        f"{'path':<26} {'in flight':>9} {'req/s':>9} {'x floor':>8} {'mean ms':>8} "
        f"{'x floor':>8} {'p99 ms':>8} {'x floor':>8} {'non-OK':>7}",
        flush=True,
    )


def _print(point: Point) -> None:
    ratios = point.ratios()
    line = (
        f"{point.probe:<26} {point.in_flight:>9} {point.load.per_second:>9.0f} "
        f"{ratios['throughput']:>7.3f}x {point.load.mean_ms:>8.2f} {ratios['mean_latency']:>7.1f}x "
        f"{point.load.p99_ms:>8.2f} {ratios['p99_latency']:>7.1f}x {point.non_ok:>7}"
    )
    if point.problems:
        line += "  NOT A RESULT: " + "; ".join(point.problems)
    print(line, point.floor_line(), sep="\n", flush=True)


def _run_stack(
    extra_env: dict[str, str],
    args: argparse.Namespace,
    settings: Settings,
    only: Callable[[Probe], bool],
) -> list[Point]:
    with running_stack(extra_env, args.database_url) as (stack, backend):
        setup = asyncio.run(set_up(stack, backend))
        _print_header()
        return measure(stack, setup, settings, only, _print)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per point")
    parser.add_argument("--warm-up", type=float, default=1.0, help="unmeasured time per point")
    parser.add_argument("--in-flight", default="1,16,64", help="comma-separated widths")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--json", metavar="PATH", help="write every figure here as JSON")
    parser.add_argument(
        "--no-tracing-cost",
        action="store_true",
        help="skip measuring GetToken again on a stack with tracing off",
    )
    args = parser.parse_args()
    need("h2load")
    settings = Settings(
        args.seconds, args.warm_up, tuple(int(w) for w in args.in_flight.split(","))
    )
    print(
        f"{os.cpu_count()} cores; about {settings.seconds:g} s per point "
        f"after {settings.warm_up:g} s of warm-up"
    )
    with start_otlp_collector() as collector:
        points = _run_stack(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint}, args, settings, lambda _: True
        )
        spans = len(collector.spans())
    print(f"({spans} spans exported over OTLP during the run)")
    figures: dict[str, Any] = {
        "cores": os.cpu_count(),
        "seconds_per_point": settings.seconds,
        "database": "postgresql",
        "tracing": "every span exported over OTLP/gRPC to a receiver on loopback",
        "points": [point.as_dict() for point in points],
    }
    checked = list(points)
    if not args.no_tracing_cost:
        untraced, figures["tracing_cost"] = _tracing_cost(points, args, settings)
        checked += untraced
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)
    if any(point.problems for point in checked):
        print("some runs had errors: they are not results", file=sys.stderr)
        sys.exit(1)


def _tracing_cost(
    points: list[Point], args: argparse.Namespace, settings: Settings
) -> tuple[list[Point], dict[str, Any]]:
    """GetToken with the agent key again, on a stack with the OpenTelemetry SDK off:
    each ratio with export against the same ratio without."""
    name = "GetToken, agent key"
    print("\nthe same path with tracing off (OTEL_SDK_DISABLED=true), to price tracing:")
    untraced = _run_stack(
        {"OTEL_SDK_DISABLED": "true"}, args, settings, lambda probe: probe.name == name
    )
    traced = {point.in_flight: point for point in points if point.probe == name}
    cost = {}
    for point in untraced:
        with_export = traced[point.in_flight].ratios()["throughput"]
        without = point.ratios()["throughput"]
        cost[str(point.in_flight)] = round(with_export / without, 4) if without else 0.0
        print(
            f"{name}, {point.in_flight} in flight: throughput with tracing = "
            f"{cost[str(point.in_flight)]:.2f}x without"
        )
    figures = {
        "path": name,
        "throughput_with_over_without": cost,
        "points_without": [point.as_dict() for point in untraced],
    }
    return untraced, figures


if __name__ == "__main__":
    main()
