"""``make bench``: the hot paths loaded as users load a server, each figure a ratio of
the floor measured in the same run.

The load comes from a C generator, ``h2load``: framed protobuf requests over one HTTP/2
connection with 1, 16 or 64 streams in flight (gRPC), or 1, 16 or 64 HTTP/1.1 connections
through Envoy (REST), each point a fixed number of requests sized to last about
``--seconds`` after a warm-up. The floor is a trivial ``grpc.aio`` server in
its own process (``bench.echo_server``), loaded with the very same request just before
each point, and for REST the same Envoy config routing to it. gRPC paths through the
gateway are also read against their shape's floor: a relay that only forwards each call
to the echo server (``bench.relay_server``), two Python gRPC processes in a row as the
gateway and broker are. The stack runs on a fresh
PostgreSQL database with production's defaults, metrics served and every span exported
over OTLP to a receiver on loopback.

A run counts only when every answer was OK: h2load's HTTP statuses, and the services'
own ``grpc_server_handled_total`` read before and after the measured requests (a gRPC
error is a trailer after HTTP 200). Otherwise it is NOT A RESULT and the bench exits 1.

``wrk`` cross-checks the REST GetToken points: the same request for about ``--seconds``
over 1, 16 or 64 connections, with its own floor. A timed run ends by closing
connections with a request still in flight, which the services count as CANCELLED: up
to one per connection and service is reported apart, as the run's cut-off tail; any
more, or any other non-OK answer, and it is not a result.

Last, the cost of observability: GetToken again on stacks with metrics off
(``NEXUS_METRICS=false``), tracing off (``OTEL_SDK_DISABLED=true``), and both, each
against its own floor; the cost is the ratio of the ratios. With metrics off the
services count nothing, so those points are checked by HTTP status alone, and say so.

    python -m bench.hot_path [--seconds 5] [--in-flight 1,16,64] [--json PATH]
                             [--database-url URL] [--no-wrk] [--no-observability-cost]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nexus.broker.v1 import connections_pb2, sessions_pb2
from nexus.gateway.v1 import gateway_pb2

from bench.floor import Floor, running_floor
from bench.loadgen import Load, grpc_frame, h2load, need, stop_on_sigterm, wrk
from bench.metrics import Handled, scrape
from bench.stack import AGENT_ID, OPS_SCOPE, Setup, access_request, running_stack, set_up
from tests.support.otlp_collector import start_otlp_collector
from tools.devstack import Stack

GRPC = "grpc"
REST = "rest"
_SERVICES = ("gateway", "broker", "policy")
# The REST paths wrk loads too, as a cross-check of h2load's figures.
_WRK_CHECKED = ("GetToken REST, admin key", "GetToken REST, agent key")
# Time for the services to finish, and count, the requests a timed run cut off.
_SETTLE_SECONDS = 0.5


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
    generator: str = "h2load"
    # False when the services count nothing (metrics off): HTTP statuses alone were checked.
    counted: bool = True
    # CANCELLED answers to requests wrk cut off when its time was up, by service.
    cancelled_at_end: dict[str, int] = field(default_factory=dict)
    # CPU time each stack process spent per measured request, in ms: unlike rates, it
    # hardly moves with other work on the machine.
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    # The zero-work relay loaded with the same request: the floor of the path's shape.
    relay: Load | None = None

    def ratios(self) -> dict[str, float]:
        return _ratios(self.load, self.floor)

    def floor_line(self) -> str:
        line = _floor_line("  its floor", self.in_flight, self.floor)
        if self.relay is None:
            return line
        relay = _ratios(self.relay, self.floor)
        return (
            f"{line}\n{_floor_line('  zero-work relay', self.in_flight, self.relay)}"
            f"  (x floor: {relay['throughput']:.3f} req/s, {relay['mean_latency']:.1f} mean)"
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
            "load_generator": self.generator,
            "answers_counted_by_services": self.counted,
            "non_ok_answers": self.non_ok if self.counted else None,
            "ok_answers_counted_by_service": self.ok_answers if self.counted else None,
            "cancelled_at_end_of_timed_run": self.cancelled_at_end,
            "cpu_ms_per_request": self.cpu_ms_per_request,
            "zero_work_relay": None
            if self.relay is None
            else {
                "measured": self.relay.as_dict(),
                "ratios_of_floor": _ratios(self.relay, self.floor),
            },
        }


def _ratios(load: Load, floor: Load) -> dict[str, float]:
    def ratio(mine: float, base: float) -> float:
        return round(mine / base, 4) if base else 0.0

    return {
        "throughput": ratio(load.per_second, floor.per_second),
        "mean_latency": ratio(load.mean_ms, floor.mean_ms),
        "p99_latency": ratio(load.p99_ms, floor.p99_ms),
    }


def _floor_line(label: str, in_flight: int, load: Load) -> str:
    return (
        f"{label:<32} {in_flight:>9} {load.per_second:>9.0f} {'':>8} "
        f"{load.mean_ms:>8.2f} {'':>8} {load.p99_ms:>8.2f}"
    )


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


def _point(
    probe: Probe, stack: Stack, floor: Load, width: int, settings: Settings, counted: bool
) -> Point:
    metrics = [stack.metrics_url(service) for service in _SERVICES]
    base = stack.rest_url if probe.kind == REST else f"http://127.0.0.1:{stack.ports[probe.port]}"
    before: Handled = Counter()
    cpu = _CpuMeter(stack)

    def measuring() -> None:
        before.update(scrape(metrics))
        cpu.start()

    load = _load(probe, base, width, settings, measuring)
    point = Point(probe.name, width, load, floor, 0, 0)
    point.cpu_ms_per_request = cpu.per_request(load.requests)
    answered = scrape(metrics)
    answered.subtract(before)
    return _checked(point, probe, answered, counted)


class _CpuMeter:
    """CPU seconds (user + system) of the stack's processes over the measured requests,
    from /proc; empty where there is none."""

    def __init__(self, stack: Stack) -> None:
        self._pids = {name: process.pid for name, process in stack.processes.items()}
        self._started: dict[str, float] = {}

    @staticmethod
    def _seconds(pid: int) -> float | None:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def start(self) -> None:
        for name, pid in self._pids.items():
            seconds = self._seconds(pid)
            if seconds is not None:
                self._started[name] = seconds

    def per_request(self, requests: int) -> dict[str, float]:
        spent = {}
        for name, started in self._started.items():
            seconds = self._seconds(self._pids[name])
            if seconds is not None and requests:
                spent[name] = round((seconds - started) / requests * 1000, 3)
        return spent


def _checked(point: Point, probe: Probe, answered: Handled, counted: bool) -> Point:
    """Fill in the services' counts and every reason the point is not a result."""
    load = point.load
    point.counted = counted
    cut_off: Counter[str] = Counter()
    for (service, _, code), count in answered.items():
        if code == "CANCELLED" and count > 0:
            cut_off[service] += count
    if point.generator == "wrk" and all(n <= point.in_flight for n in cut_off.values()):
        # At most one request per connection was in flight when wrk's time was up:
        # reported as the run's tail, not as failures.
        point.cancelled_at_end = dict(cut_off)
    else:
        cut_off.clear()
    failing = {
        key: n
        for key, n in answered.items()
        if key[2] != "OK" and n and not (key[2] == "CANCELLED" and key[0] in cut_off)
    }
    point.non_ok = sum(failing.values())
    point.ok_answers = answered[(*probe.counted, "OK")]
    if load.failed:
        point.problems.append(f"{load.failed} requests failed at the HTTP level")
    if not load.requests:
        point.problems.append("no request completed")
    if not counted:
        return point
    if point.non_ok:
        point.problems.append(f"{point.non_ok} non-OK gRPC answers: {failing}")
    if point.ok_answers < load.requests:
        point.problems.append(
            f"the service counted {point.ok_answers} OK answers for {load.requests} requests"
        )
    return point


def _wrk_point(probe: Probe, stack: Stack, floor: Floor, width: int, settings: Settings) -> Point:
    """The REST point again, loaded by wrk for a time, each side after its own warm-up."""
    metrics = [stack.metrics_url(service) for service in _SERVICES]

    def timed(base: str, measuring: Callable[[], None]) -> Load:
        wrk(base + probe.path, probe.headers, settings.warm_up, width)
        time.sleep(_SETTLE_SECONDS)  # the warm-up's cut-off tail is counted before
        measuring()
        return wrk(base + probe.path, probe.headers, settings.seconds, width)

    base = timed(floor.rest_url, lambda: None)
    if base.failed or not base.requests:
        raise RuntimeError(f"the floor itself failed under wrk ({probe.name}, {width}): {base}")
    before: Handled = Counter()
    load = timed(stack.rest_url, lambda: before.update(scrape(metrics)))
    time.sleep(_SETTLE_SECONDS)  # and this run's own tail, after
    answered = scrape(metrics)
    answered.subtract(before)
    point = Point(f"{probe.name} (wrk)", width, load, base, 0, 0, generator="wrk")
    return _checked(point, probe, answered, counted=True)


def _floor(
    probe: Probe, floor: Floor, width: int, settings: Settings, *, relay: bool = False
) -> Load:
    """The floor (or the relay in front of it) loaded with this very request, just
    before the path: background load on the machine then weighs on both sides of the
    ratio alike."""
    base = floor.relay_url if relay else floor.rest_url if probe.kind == REST else floor.grpc_url
    load = _load(probe, base, width, settings, lambda: None)
    if load.failed or not load.requests:
        what = "the relay" if relay else "the floor itself"
        raise RuntimeError(f"{what} failed ({probe.name}, {width} in flight): {load}")
    return load


def measure(
    stack: Stack,
    setup: Setup,
    settings: Settings,
    only: Callable[[Probe], bool],
    report: Callable[[Point], None],
    *,
    counted: bool = True,
    with_wrk: bool = False,
) -> list[Point]:
    points = []
    with running_floor() as floor:
        for probe in filter(only, probes(stack, setup)):
            for width in settings.widths:
                base = _floor(probe, floor, width, settings)
                relay = None
                if probe.kind == GRPC and probe.port == "gateway":
                    relay = _floor(probe, floor, width, settings, relay=True)
                point = _point(probe, stack, base, width, settings, counted)
                point.relay = relay
                report(point)
                points.append(point)
            if with_wrk and probe.kind == REST and probe.name in _WRK_CHECKED:
                for width in settings.widths:
                    point = _wrk_point(probe, stack, floor, width, settings)
                    report(point)
                    points.append(point)
    return points


def _print_header() -> None:
    print(
        f"{'path':<32} {'in flight':>9} {'req/s':>9} {'x floor':>8} {'mean ms':>8} "
        f"{'x floor':>8} {'p99 ms':>8} {'x floor':>8} {'non-OK':>7}",
        flush=True,
    )


def _print(point: Point) -> None:
    ratios = point.ratios()
    line = (
        f"{point.probe:<32} {point.in_flight:>9} {point.load.per_second:>9.0f} "
        f"{ratios['throughput']:>7.3f}x {point.load.mean_ms:>8.2f} {ratios['mean_latency']:>7.1f}x "
        f"{point.load.p99_ms:>8.2f} {ratios['p99_latency']:>7.1f}x {point.non_ok:>7}"
    )
    if not point.counted:
        line = line[: -len(f"{point.non_ok:>7}")] + f"{'-':>7}  (metrics off: HTTP statuses only)"
    if point.cancelled_at_end:
        line += f"  (cut off by wrk's end, CANCELLED: {point.cancelled_at_end})"
    if point.cpu_ms_per_request:
        spent = " ".join(f"{name} {ms:.2f}" for name, ms in point.cpu_ms_per_request.items())
        line += f"  [CPU ms/request: {spent}]"
    if point.problems:
        line += "  NOT A RESULT: " + "; ".join(point.problems)
    print(line, point.floor_line(), sep="\n", flush=True)


def _run_stack(
    extra_env: dict[str, str],
    args: argparse.Namespace,
    settings: Settings,
    only: Callable[[Probe], bool],
    *,
    with_wrk: bool = False,
) -> list[Point]:
    counted = extra_env.get("NEXUS_METRICS", "true") != "false"
    with running_stack(extra_env, args.database_url) as (stack, backend):
        setup = asyncio.run(set_up(stack, backend))
        _print_header()
        return measure(stack, setup, settings, only, _print, counted=counted, with_wrk=with_wrk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per point")
    parser.add_argument("--warm-up", type=float, default=1.0, help="unmeasured time per point")
    parser.add_argument("--in-flight", default="1,16,64", help="comma-separated widths")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--json", metavar="PATH", help="write every figure here as JSON")
    parser.add_argument(
        "--only", metavar="TEXT", help="measure only the paths whose name contains TEXT"
    )
    parser.add_argument("--no-wrk", action="store_true", help="skip the wrk cross-check")
    parser.add_argument(
        "--no-observability-cost",
        "--no-tracing-cost",
        action="store_true",
        help="skip measuring GetToken again with metrics and tracing off",
    )
    args = parser.parse_args()
    need("h2load", *(() if args.no_wrk else ("wrk",)))
    settings = Settings(
        args.seconds, args.warm_up, tuple(int(w) for w in args.in_flight.split(","))
    )
    print(
        f"{os.cpu_count()} cores; about {settings.seconds:g} s per point "
        f"after {settings.warm_up:g} s of warm-up"
    )

    def only(probe: Probe) -> bool:
        return args.only is None or args.only in probe.name

    with start_otlp_collector(keep_spans=False) as collector:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint}
        points = _run_stack(env, args, settings, only, with_wrk=not args.no_wrk)
        spans = collector.count
        print(f"({spans} spans exported over OTLP during the run)")
        figures: dict[str, Any] = {
            "cores": os.cpu_count(),
            "seconds_per_point": settings.seconds,
            "database": "postgresql",
            "metrics": "every call counted and timed (prometheus-client), served for scraping",
            "tracing": "every span exported over OTLP/gRPC to a receiver on loopback",
            "points": [point.as_dict() for point in points if point.generator == "h2load"],
            "wrk_cross_check": [point.as_dict() for point in points if point.generator == "wrk"],
        }
        checked = list(points)
        if not args.no_observability_cost:
            off, figures["observability_cost"] = _observability_cost(points, env, args, settings)
            checked += off
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)
    if any(point.problems for point in checked):
        print("some runs had errors: they are not results", file=sys.stderr)
        sys.exit(1)


# What is turned off, on top of the measured build's settings, to price each part.
_OFF = {
    "metrics off": {"NEXUS_METRICS": "false"},
    "tracing off": {"OTEL_SDK_DISABLED": "true"},
    "metrics and tracing off": {"NEXUS_METRICS": "false", "OTEL_SDK_DISABLED": "true"},
}


def _observability_cost(
    points: list[Point], env: dict[str, str], args: argparse.Namespace, settings: Settings
) -> tuple[list[Point], dict[str, Any]]:
    """GetToken with the agent key again, on stacks with metrics, tracing or both off.

    Two prices per part: the throughput ratio (x floor) with everything on over the same
    ratio with the part off (1.0 = free; 0.8 = with it on, the path does 80% of what it
    does without), and the services' CPU time per request with everything on over with
    the part off (1.25 = it costs a quarter more CPU). On a busy machine the rates
    swing more than the CPU time does: read both."""
    name = "GetToken, agent key"
    on = {point.in_flight: point for point in points if point.probe == name}
    figures: dict[str, Any] = {
        "path": name,
        "throughput_all_on_over_off": {},
        "service_cpu_per_request_all_on_over_off": {},
        "points": {},
    }
    measured: list[Point] = []
    for label, off in _OFF.items():
        print(f"\n{name} with {label}, to price observability:")
        without = _run_stack({**env, **off}, args, settings, lambda p: p.name == name)
        measured += without
        rates, cpu = {}, {}
        for point in without:
            if point.in_flight not in on:
                continue
            width = str(point.in_flight)
            rates[width] = _ratio(
                on[point.in_flight].ratios()["throughput"], point.ratios()["throughput"]
            )
            cpu[width] = _ratio(_service_cpu(on[point.in_flight]), _service_cpu(point))
        figures["throughput_all_on_over_off"][label] = rates
        figures["service_cpu_per_request_all_on_over_off"][label] = cpu
        figures["points"][label] = [point.as_dict() for point in without]
    print(f"\ncost of observability, {name}, all on over ... off, by in flight:")
    for label in _OFF:
        rates = figures["throughput_all_on_over_off"][label]
        cpu = figures["service_cpu_per_request_all_on_over_off"][label]
        print(
            f"  {label:<24} throughput x floor "
            + ", ".join(f"{w}: {r:.2f}" for w, r in rates.items())
            + "; service CPU per request "
            + ", ".join(f"{w}: {r:.2f}" for w, r in cpu.items())
        )
    return measured, figures


def _ratio(mine: float, other: float) -> float:
    return round(mine / other, 4) if other else 0.0


def _service_cpu(point: Point) -> float:
    """CPU ms per request of gateway, broker and policy together."""
    return sum(ms for name, ms in point.cpu_ms_per_request.items() if name in _SERVICES)


if __name__ == "__main__":
    stop_on_sigterm()
    main()
