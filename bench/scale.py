"""Scale: GetToken with many connections, the refresh loop's throughput, and
each service's memory, on PostgreSQL.

One run, one stack (tools/devstack.py, production defaults) on a fresh
PostgreSQL database, and a provider whose token endpoint is a real HTTP server
on loopback (bench/_token_server.py, its own process; its own capacity is
measured first with h2load, so it is shown not to be the bottleneck):

1. seeds ``--small`` connections straight into the broker's tables (its own
   ``Table`` definitions, credentials sealed with its keyring and row-bound
   AAD), checks one through GetToken, and drives GetToken with h2load
   (framed protobuf over HTTP/2, 1 and 16 in flight, admin key and agent key)
   against a fixed set of connection ids spread over the table: h2load sends
   one body per run, so each id gets its own run and the figures are summed;
2. seeds up to ``--large`` and measures again; prints each figure as the
   ratio large / small;
3. reads each process's resident memory (VmRSS and its peak, VmHWM);
4. makes ``--due`` connections due at once, in one UPDATE, while the broker's
   refresh loop runs, and counts refresh grants at the token server until all
   are done; confirms in the database that each of those connections was
   refreshed (and nothing else failed), and reports connections per second.

Non-OK answers are read from the gateway's ``grpc_server_handled_total``; a
run with any is reported as such, never as a result.

    python -m bench.scale [--small 1000] [--large 100000] [--due 10000]
                                [--requests 2000] [--ids 4] [--database-url URL]
                                [--only refresh] [--json PATH]

``--only refresh`` runs the token server's capacity and step 4 alone, on one
stack seeded with ``--large`` connections.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from nexus.broker.v1 import connections_pb2, providers_pb2
from nexus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from nexus.policy.v1 import agents_pb2
from nexus_broker.adapters.connection_repository import _credentials_aad, _tokens_to_json
from nexus_broker.adapters.orm import audit_events, connections
from nexus_broker.domain.connections import ConnectionStatus, TokenSet
from nexus_common import Keyring
from sqlalchemy import Engine, create_engine, func, select, text, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.loadgen import Load, grpc_frame, h2load, need, stop_on_sigterm
from bench.metrics import scrape
from tests.support.postgres import fresh_database, postgres_url
from tools.devstack import DEV_PORTS, ROOT, Stack, free_port

WORKSPACE = "scale"
PROVIDER = "scale-oauth"
AGENT = "scale-agent"
RPC_PATH = "/nexus.gateway.v1.ConnectionService/GetToken"
SEED_CHUNK = 5_000
# How long the refresh loop may go without a single grant before the run gives up.
STALL_SECONDS = 60.0


# ---- the token endpoint -------------------------------------------------------------


@contextmanager
def token_server() -> Iterator[str]:
    """bench/_token_server.py in its own process; yields its base URL."""
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - our own script, no shell
        [sys.executable, str(ROOT / "bench" / "_token_server.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                _count(url)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the token server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _count(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/count", timeout=5) as reply:  # noqa: S310 - loopback
        counted: dict[str, float] = json.loads(reply.read())
    return counted


def token_server_capacity(requests: int) -> Load:
    """Refresh grants per second a fresh token server answers (HTTP/1.1, 8 connections:
    more than the refresh loop's 8 concurrent refreshes could use)."""
    with token_server() as url:
        return h2load(
            f"{url}/token",
            {"content-type": "application/x-www-form-urlencoded"},
            requests,
            body=b"grant_type=refresh_token&refresh_token=rt-capacity&client_id=scale",
            connections=8,
            h1=True,
        )


# ---- h2load ---------------------------------------------------------------------------


def get_token_load(
    target: str, key: tuple[str, str], ids: list[str], requests: int, inflight: int
) -> Load:
    """GetToken for each id in turn (h2load sends one body per run), ``requests`` in
    all, ``inflight`` on one connection; the runs added up (p99: the worst run's)."""
    headers = {"content-type": "application/grpc", "te": "trailers", key[0]: key[1]}
    runs = [
        h2load(
            f"http://{target}{RPC_PATH}",
            headers,
            max(requests // len(ids), inflight),
            body=grpc_frame(
                connections_pb2.GetTokenRequest(connection_id=connection_id).SerializeToString()
            ),
            streams=inflight,
        )
        for connection_id in ids
    ]
    total = sum(run.requests for run in runs)
    return Load(
        requests=total,
        per_second=total / sum(run.requests / run.per_second for run in runs),
        mean_ms=sum(run.mean_ms * run.requests for run in runs) / total,
        p99_ms=max(run.p99_ms for run in runs),
        failed=sum(run.failed for run in runs),
    )


def not_ok(stack: Stack, method: str) -> int:
    """Answers other than OK the gateway counted for ``method`` so far."""
    counts = scrape([stack.metrics_url("gateway")])
    return sum(n for (_, name, code), n in counts.items() if name == method and code != "OK")


# ---- the stack and its data -----------------------------------------------------------


def create_provider(channel: grpc.Channel, admin: tuple[str, str], token_url: str) -> str:
    provider = providers_pb2.Provider(
        name=PROVIDER,
        auth_type="oauth2",
        client_id="scale-client",
        client_secret="scale-secret",  # noqa: S106 - the local token server's, checked by nobody
        auth_url=token_url.replace("/token", "/authorize"),
        token_url=token_url,
        scopes=["read"],
    )
    created = gateway_pb2_grpc.ProviderServiceStub(channel).CreateProvider(
        gateway_pb2.CreateProviderRequest(provider=provider), metadata=(admin,)
    )
    return str(created.id)


def create_agent(channel: grpc.Channel, admin: tuple[str, str]) -> str:
    """An agent bound to the provider and the workspace; its key."""
    bindings = agents_pb2.AgentBindings(providers=[PROVIDER], workspaces=[WORKSPACE])
    created = gateway_pb2_grpc.AgentServiceStub(channel).CreateAgent(
        gateway_pb2.CreateAgentRequest(
            agent=agents_pb2.Agent(agent_id=AGENT, allowed_scopes=["read"], bindings=bindings)
        ),
        metadata=(admin,),
    )
    return str(created.agent_key)


def _row(keyring: Keyring, provider_id: str, index: int, now: datetime) -> dict[str, Any]:
    """An active connection holding a token good for a day, as the broker stores one."""
    connection_id = str(uuid.uuid4())
    later = now + timedelta(days=1)
    tokens = TokenSet(
        access_token=f"at-seed-{index}",
        token_type="Bearer",  # noqa: S106 - a token type, not a secret
        refresh_token=f"rt-seed-{index}",
        expires_at=later,
        scope=("read",),
    )
    sealed = keyring.seal(
        json.dumps(_tokens_to_json(tokens)).encode(), _credentials_aad(connection_id)
    )
    return {
        "id": connection_id,
        "workspace_id": WORKSPACE,
        "provider_id": provider_id,
        "scopes": ["read"],
        "return_url": "http://127.0.0.1/done",
        "status": ConnectionStatus.ACTIVE,
        "created_at": now,
        "updated_at": now,
        "credentials_sealed": sealed,
        "token_expires_at": later,
        "last_refreshed_at": now,
        "next_refresh_at": later,
        "refresh_failures": 0,
        "last_error": "",
    }


def seed(engine: Engine, keyring: Keyring, provider_id: str, start: int, stop: int) -> list[str]:
    """Insert connections ``start`` .. ``stop - 1``; their ids, in that order."""
    ids: list[str] = []
    now = datetime.now(UTC)
    for low in range(start, stop, SEED_CHUNK):
        rows = [_row(keyring, provider_id, i, now) for i in range(low, min(stop, low + SEED_CHUNK))]
        with engine.begin() as db:
            db.execute(connections.insert(), rows)
        ids.extend(row["id"] for row in rows)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
        db.execute(text("VACUUM ANALYZE connections"))
    return ids


def spread(ids: list[str], count: int) -> list[str]:
    """``count`` ids evenly spaced over the seeding order, first and last included."""
    if count <= 1:
        return ids[:1]
    return [ids[round(i * (len(ids) - 1) / (count - 1))] for i in range(count)]


def check_token(channel: grpc.Channel, admin: tuple[str, str], ids: list[str]) -> None:
    """The seeded rows read back through GetToken as what was sealed into them."""
    stub = gateway_pb2_grpc.ConnectionServiceStub(channel)
    for position in (0, len(ids) - 1):
        payload = stub.GetToken(
            connections_pb2.GetTokenRequest(connection_id=ids[position]), metadata=(admin,)
        )
        if f"at-seed-{position}" not in str(payload):
            raise RuntimeError(f"GetToken did not return the seeded token of row {position}")


def memory(stack: Stack) -> dict[str, dict[str, int]]:
    """Resident memory of each process, in KiB: now (VmRSS) and at its peak (VmHWM)."""
    result = {}
    for name, process in stack.processes.items():
        fields = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
        )
        result[name] = {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}
    return result


# ---- the measurements -----------------------------------------------------------------


def measure_get_token(
    stack: Stack, keys: dict[str, tuple[str, str]], ids: list[str], requests: int
) -> dict[str, dict[str, Any]]:
    results = {}
    for key_name, key in keys.items():
        get_token_load(stack.gateway_target, key, ids, len(ids) * 16, 16)  # warm up
        for inflight in (1, 16):
            before = not_ok(stack, "GetToken")
            count = requests if inflight > 1 else max(requests // 4, len(ids))
            load = get_token_load(stack.gateway_target, key, ids, count, inflight)
            label = f"{key_name} key, {inflight} in flight"
            results[label] = {
                **load.as_dict(),
                "not_ok": not_ok(stack, "GetToken") - before,
            }
    return results


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_refresh(engine: Engine, token_url: str, due: list[str], stack: Stack) -> dict[str, Any]:
    """Make ``due`` connections due in one UPDATE; wait until each one is refreshed.
    Also reports the broker's CPU time per refresh, which neighbours on a shared
    machine do not change the way they change the rate."""
    base = _count(token_url)
    broker_cpu = cpu_seconds(stack.processes["broker"].pid)
    with engine.begin() as db:
        started_at: datetime = db.execute(select(func.now())).scalar_one()
        db.execute(
            update(connections).where(connections.c.id.in_(due)).values(next_refresh_at=func.now())
        )
    started = time.time()
    grants, last_progress = 0.0, time.monotonic()
    while grants < len(due):
        time.sleep(0.5)
        counted = _count(token_url)
        if counted["grants"] - base["grants"] > grants:
            grants, last_progress = counted["grants"] - base["grants"], time.monotonic()
        elif time.monotonic() - last_progress > STALL_SECONDS:
            break
        if stack.processes["broker"].poll() is not None:
            raise RuntimeError(f"the broker exited:\n{stack.log_tail('broker')}")
    finished = time.time()
    broker_cpu = cpu_seconds(stack.processes["broker"].pid) - broker_cpu
    counted = _count(token_url)
    confirmed = _confirm_refreshed(engine, due, started_at)
    span = counted["last"] - counted["first"]
    return {
        "due": len(due),
        "grants_at_token_server": int(counted["grants"] - base["grants"]),
        "distinct_refresh_tokens": int(counted["distinct_refresh_tokens"]),
        **confirmed,
        "seconds_due_to_last_grant": counted["last"] - started,
        "seconds_first_to_last_grant": span,
        "seconds_to_observed_done": finished - started,
        "per_second_from_due": len(due) / (counted["last"] - started),
        "per_second_first_to_last_grant": (counted["grants"] - 1) / span if span else 0.0,
        "broker_cpu_ms_per_refresh": 1000 * broker_cpu / len(due),
    }


def _confirm_refreshed(engine: Engine, due: list[str], since: datetime) -> dict[str, int]:
    with engine.connect() as db:
        refreshed = db.scalar(
            select(func.count()).where(
                connections.c.id.in_(due),
                connections.c.last_refreshed_at >= since,
                connections.c.status == ConnectionStatus.ACTIVE,
                connections.c.refresh_failures == 0,
                connections.c.lease_owner.is_(None),
            )
        )
        failing = db.scalar(
            select(func.count()).where(
                (connections.c.refresh_failures > 0)
                | (connections.c.status != ConnectionStatus.ACTIVE)
            )
        )
        audited = db.scalar(
            select(func.count()).where(
                audit_events.c.action == "refresh.succeeded", audit_events.c.event_time >= since
            )
        )
    return {
        "refreshed_in_database": int(refreshed or 0),
        "failing_in_database": int(failing or 0),
        "refresh_audit_rows": int(audited or 0),
    }


@dataclass
class Deployment:
    """A stack on its own fresh database, with the provider, an agent and seeded rows."""

    stack: Stack
    engine: Engine
    keys: dict[str, tuple[str, str]]
    ids: list[str]


@contextmanager
def deployment(
    database_url: str, data: Path, token_url: str, connections_count: int
) -> Iterator[Deployment]:
    url, drop = fresh_database(database_url)
    engine = create_engine(url)
    env = {
        "NEXUS_BROKER_DATABASE_URL": url,
        "NEXUS_POLICY_DATABASE_URL": url,
        "NEXUS_ENVIRONMENT": "production",
        "NEXUS_LOG_LEVEL": "WARNING",
    }
    stack = Stack(data, {name: free_port() for name in DEV_PORTS}, env=env)
    try:
        stack.start()
        admin = ("x-api-key", stack.admin_key)
        with grpc.insecure_channel(stack.gateway_target) as channel:
            provider_id = create_provider(channel, admin, f"{token_url}/token")
            agent = ("authorization", f"Bearer {create_agent(channel, admin)}")
            keyring = Keyring.from_spec(stack.env["NEXUS_KEYRING"])
            ids = seed(engine, keyring, provider_id, 0, connections_count)
            check_token(channel, admin, ids)
        yield Deployment(stack, engine, {"admin": admin, "agent": agent}, ids)
    finally:
        stack.stop()
        engine.dispose()
        drop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    capacity = token_server_capacity(5000)
    report: dict[str, Any] = {
        "token_server_capacity": capacity.as_dict(),
        "connections": {"small": args.small, "large": args.large},
    }
    server = args.database_url or postgres_url()
    if args.only == "refresh":
        with (
            token_server() as token_url,
            tempfile.TemporaryDirectory() as large_dir,
            deployment(server, Path(large_dir), token_url, args.large) as large,
        ):
            due = large.ids[: args.due]
            report["refresh"] = measure_refresh(large.engine, token_url, due, large.stack)
            report["memory_kib_after_refresh"] = memory(large.stack)
        return report
    with (
        token_server() as token_url,
        tempfile.TemporaryDirectory() as small_dir,
        tempfile.TemporaryDirectory() as large_dir,
        deployment(server, Path(small_dir), token_url, args.small) as small,
        deployment(server, Path(large_dir), token_url, args.large) as large,
    ):
        report.update(compare(args, small, large))
        report["memory_kib"] = {"small": memory(small.stack), "large": memory(large.stack)}
        # Stopping twice is harmless: the refresh loop gets the machine to itself.
        small.stack.stop()
        due = large.ids[: args.due]
        report["refresh"] = measure_refresh(large.engine, token_url, due, large.stack)
        report["memory_kib_after_refresh"] = memory(large.stack)
    return report


def compare(args: argparse.Namespace, small: Deployment, large: Deployment) -> dict[str, Any]:
    """Both stacks measured in turn, ``--rounds`` times, so that a neighbour's load on
    the machine falls on both; each figure's ratio is the median of the rounds'."""
    rounds: list[dict[str, dict[str, dict[str, Any]]]] = []
    for _ in range(args.rounds):
        rounds.append(
            {
                name: measure_get_token(
                    side.stack, side.keys, spread(side.ids, args.ids), args.requests
                )
                for name, side in (("small", small), ("large", large))
            }
        )
    labels = list(rounds[0]["small"])

    def ratio(label: str, figure: str) -> float:
        ratios: list[float] = [
            r["large"][label][figure] / r["small"][label][figure] for r in rounds
        ]
        return statistics.median(ratios)

    return {
        "get_token_rounds": rounds,
        "get_token_ratio_large_to_small": {
            label: {
                "throughput": ratio(label, "per_second"),
                "mean_latency": ratio(label, "mean_ms"),
                "not_ok": sum(r[side][label]["not_ok"] for r in rounds for side in r),
            }
            for label in labels
        },
    }


def print_report(report: dict[str, Any]) -> None:
    capacity = report["token_server_capacity"]
    print(
        f"token server alone: {capacity['per_second']:.0f} refresh grants/s "
        f"(h2load, 8 connections, {capacity['failed']} failed)"
    )
    if "get_token_rounds" in report:
        print_get_token(report)
    print_refresh(report)


def print_get_token(report: dict[str, Any]) -> None:
    sizes = report["connections"]
    print(
        f"\nGetToken over gRPC (h2load, one HTTP/2 connection), {sizes['small']:,} -> "
        f"{sizes['large']:,} connections:"
    )
    rounds = report["get_token_rounds"]
    for label, ratio in report["get_token_ratio_large_to_small"].items():
        figures = {
            side: {
                figure: statistics.median(r[side][label][figure] for r in rounds)
                for figure in ("per_second", "mean_ms")
            }
            for side in ("small", "large")
        }
        small, large = figures["small"], figures["large"]
        print(
            f"  {label:<24} {small['per_second']:6.0f}/s -> {large['per_second']:6.0f}/s "
            f"({ratio['throughput']:.2f}x), mean {small['mean_ms']:6.2f} ms -> "
            f"{large['mean_ms']:6.2f} ms ({ratio['mean_latency']:.2f}x); "
            f"non-OK answers {ratio['not_ok']}"
        )
    print(f"  (medians of {len(rounds)} rounds, the two stacks measured in turn)")
    print(
        f"\nresident memory after the load, MiB (peak), {sizes['small']:,} -> "
        f"{sizes['large']:,} connections:"
    )
    for name, kib in report["memory_kib"]["large"].items():
        before = report["memory_kib"]["small"][name]
        print(
            f"  {name:<8} {before['VmRSS'] / 1024:7.1f} ({before['VmHWM'] / 1024:.1f}) -> "
            f"{kib['VmRSS'] / 1024:7.1f} ({kib['VmHWM'] / 1024:.1f})"
        )


def print_refresh(report: dict[str, Any]) -> None:
    refresh = report["refresh"]
    capacity = report["token_server_capacity"]["per_second"]
    print(
        f"\nrefresh loop, one broker, {refresh['due']:,} connections due at once: "
        f"{refresh['per_second_from_due']:.0f} connections/s from due to the last grant "
        f"({refresh['seconds_due_to_last_grant']:.1f} s), "
        f"{refresh['per_second_first_to_last_grant']:.0f}/s first to last grant; "
        f"{refresh['per_second_from_due'] / capacity:.3f}x the token server alone"
    )
    print(
        f"  grants at the token server {refresh['grants_at_token_server']:,} "
        f"({refresh['distinct_refresh_tokens']:,} distinct refresh tokens); in the database "
        f"{refresh['refreshed_in_database']:,} refreshed, {refresh['failing_in_database']} "
        f"failing, {refresh['refresh_audit_rows']:,} refresh.succeeded audit rows; "
        f"broker CPU {refresh['broker_cpu_ms_per_refresh']:.2f} ms per refresh"
    )
    broker = report["memory_kib_after_refresh"]["broker"]
    print(
        f"  broker after the refreshes: {broker['VmRSS'] / 1024:.1f} MiB "
        f"(peak {broker['VmHWM'] / 1024:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=2_000, help="per figure, at 16 in flight")
    parser.add_argument("--rounds", type=int, default=3, help="GetToken rounds per stack")
    parser.add_argument("--ids", type=int, default=4, help="connection ids spread over the table")
    parser.add_argument("--database-url", default="", help="a PostgreSQL server (default: local)")
    parser.add_argument(
        "--only", choices=("refresh",), help="run one part: the refresh loop's throughput"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    if not args.small <= args.large or args.due > args.large:
        parser.error("need --small <= --large and --due <= --large")
    need("h2load")
    report = run(args)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    stop_on_sigterm()
    main()
