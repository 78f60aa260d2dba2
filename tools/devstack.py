"""Run the whole Nexus stack on loopback: policy, broker, gateway and Envoy.

``make run`` calls this with fixed ports; the end-to-end tests call
``Stack`` with free ports. Dev secrets (admin key, internal token, keyring)
are generated once into the data directory, which git ignores.

``make run`` speaks plaintext between the services. ``Stack(tls=True)`` runs them
as deploy/k8s does: mutual TLS with a certificate each (a dev CA made into the
data directory by ``tools.devcerts``), and TLS from Envoy to the gateway.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
ENVOY_CONFIG = ROOT / "envoy" / "envoy.yaml"
# The committed config's ports, rewritten for a run with other ports.
ENVOY_PORTS = {"rest": 8080, "envoy_admin": 9901, "gateway": 50051, "gateway_http": 8081}
RATE_LIMITS_ON = (
    "filter_enabled: { default_value: { numerator: 100, denominator: HUNDRED } }  # rate limits on"
)
# In start-up order: each one's dependencies are up before it.
SERVICES = ("policy", "broker", "gateway")
DEV_PORTS = {
    **ENVOY_PORTS,
    "broker": 50061,
    "policy": 50071,
    # Prometheus metrics, one endpoint per service.
    "gateway_metrics": 9464,
    "broker_metrics": 9465,
    "policy_metrics": 9466,
}
STARTUP_TIMEOUT = 60.0

__all__ = ["DEV_PORTS", "Stack", "dev_secrets", "free_port", "render_envoy_config"]


# Ports already handed out by this process: two calls made before either port
# is bound must not return the same one.
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port that is free now, for a server to bind to shortly.

    The port comes from below the kernel's ephemeral range. A port from inside
    it (what binding to port 0 returns) can become the local end of any outgoing
    connection before the server gets to bind it; under a test run's hundreds of
    database and gRPC connections, that happened.
    """
    low = _ephemeral_range()[0]
    candidates = range(10_000, low) if low > 11_000 else range(1_024, low)
    for _ in range(200):
        port = secrets.choice(candidates)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port found in {candidates}")


@functools.cache
def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except OSError:
        return 32_768, 60_999  # Linux's default, and close to other systems' ranges


def dev_secrets(data_dir: Path) -> dict[str, str]:
    """The data directory's secrets; any missing one is generated and kept."""
    from nexus_common import generate_key_spec

    path = data_dir / "secrets.json"
    values: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    defaults: dict[str, Callable[[], str]] = {
        "NEXUS_ADMIN_API_KEYS": lambda: f"dev:nxa_{secrets.token_urlsafe(24)}",
        "NEXUS_INTERNAL_TOKEN": lambda: secrets.token_urlsafe(32),
        "NEXUS_KEYRING": lambda: generate_key_spec(1),
        "NEXUS_STATE_KEY": lambda: secrets.token_urlsafe(48),
    }
    missing = {name: make() for name, make in defaults.items() if name not in values}
    if missing:
        values.update(missing)
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(values, indent=2))
    return values


def render_envoy_config(
    ports: Mapping[str, int], gateway_ca: Path | None = None, *, rate_limited: bool = True
) -> str:
    """envoy/envoy.yaml on ``ports``; with ``gateway_ca``, gRPC and the browser pages
    to the gateway are TLS checked against it, exactly as deploy/k8s has it; without
    its rate limits for a bench, which loads one address and one key far past them on
    purpose."""
    from tools import render_k8s_envoy

    text = ENVOY_CONFIG.read_text()
    for name, default in ENVOY_PORTS.items():
        marker = f"port_value: {default}"
        if text.count(marker) != 1:
            raise RuntimeError(f"envoy.yaml must contain {marker!r} exactly once")
        text = text.replace(marker, f"port_value: {ports[name]}")
    if not rate_limited:
        if text.count(RATE_LIMITS_ON) != 1:
            raise RuntimeError(f"envoy.yaml must contain {RATE_LIMITS_ON!r} exactly once")
        off = RATE_LIMITS_ON.replace("numerator: 100", "numerator: 0")
        text = text.replace(RATE_LIMITS_ON, off)
    if gateway_ca is not None:
        text = render_k8s_envoy.tls_to_gateway(text, str(gateway_ca))
    return text


@dataclass
class Stack:
    data_dir: Path
    ports: dict[str, int]
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Envoy's per-key and per-address limits (a bench turns them off).
    rate_limited: bool = True
    tls: bool = False

    @property
    def admin_key(self) -> str:
        return self.env["NEXUS_ADMIN_API_KEYS"].split(",")[0].partition(":")[2]

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['rest']}"

    @property
    def gateway_target(self) -> str:
        return f"127.0.0.1:{self.ports['gateway']}"

    def _service_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "NEXUS_BROKER_DATABASE_URL": f"sqlite:///{self.data_dir / 'broker.db'}",
            "NEXUS_POLICY_DATABASE_URL": f"sqlite:///{self.data_dir / 'policy.db'}",
            **dev_secrets(self.data_dir),
            "NEXUS_POLICY_LISTEN": f"127.0.0.1:{self.ports['policy']}",
            "NEXUS_POLICY_TARGET": f"127.0.0.1:{self.ports['policy']}",
            "NEXUS_BROKER_LISTEN": f"127.0.0.1:{self.ports['broker']}",
            "NEXUS_BROKER_TARGET": f"127.0.0.1:{self.ports['broker']}",
            "NEXUS_GATEWAY_LISTEN": f"127.0.0.1:{self.ports['gateway']}",
            "NEXUS_GATEWAY_HTTP_LISTEN": f"127.0.0.1:{self.ports['gateway_http']}",
            "NEXUS_PUBLIC_BASE_URL": self.rest_url,
            # The docs' walkthrough runs as written; production fails closed.
            "NEXUS_ENVIRONMENT": "development",
            # Providers and backends on this machine may be called, but never the
            # stack's own listeners (Envoy's admin port would let a token_url stop Envoy).
            "NEXUS_OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
            "NEXUS_OUTBOUND_DENIED_PORTS": ",".join(str(p) for p in sorted(self.ports.values())),
            # Without ``tls`` every hop is loopback plaintext on purpose, also when a
            # test runs the stack as production.
            **({} if self.tls else {"NEXUS_ALLOW_PLAINTEXT": "true"}),
            **self.env,
        }

    @property
    def certs(self) -> Path:
        return self.data_dir / "certs"

    def _own_env(self, service: str, env: Mapping[str, str]) -> Mapping[str, str]:
        """The shared settings, plus the metrics address when this service has one,
        and its own certificate with ``tls``."""
        own = dict(env)
        port = self.ports.get(f"{service}_metrics")
        if port is not None:
            own["NEXUS_METRICS_LISTEN"] = f"127.0.0.1:{port}"
        if self.tls:
            cert, key = str(self.certs / f"{service}.pem"), str(self.certs / f"{service}-key.pem")
            own.update(
                NEXUS_TLS_CERT_FILE=cert,
                NEXUS_TLS_KEY_FILE=key,
                NEXUS_TLS_CA_FILE=str(self.certs / "ca.pem"),
            )
            if service == "gateway":
                own.update(NEXUS_GATEWAY_TLS_CERT_FILE=cert, NEXUS_GATEWAY_TLS_KEY_FILE=key)
        return own

    def metrics_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[f'{service}_metrics']}/metrics"

    def _spawn(self, name: str, args: list[str], env: Mapping[str, str]) -> None:
        log_dir = self.data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                args,
                cwd=ROOT,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.data_dir / "logs" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wait(self, name: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited during start-up:\n{self.log_tail(name)}")
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not become ready:\n{self.log_tail(name)}")

    def _channel(self, port: int, service: str) -> grpc.Channel:
        """A channel to ``service``, presenting the gateway's certificate with ``tls``."""
        if not self.tls:
            return grpc.insecure_channel(f"127.0.0.1:{port}")
        credentials = grpc.ssl_channel_credentials(
            (self.certs / "ca.pem").read_bytes(),
            (self.certs / "gateway-key.pem").read_bytes(),
            (self.certs / "gateway.pem").read_bytes(),
        )
        return grpc.secure_channel(
            f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", service)]
        )

    def _grpc_ready(self, port: int, service: str) -> bool:
        with self._channel(port, service) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def _envoy_ready(self) -> bool:
        import urllib.request

        try:
            url = f"http://127.0.0.1:{self.ports['envoy_admin']}/ready"
            with urllib.request.urlopen(url, timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def start(self) -> Stack:
        env = self._service_env()
        self.env = {key: env[key] for key in env if key.startswith("NEXUS_")}
        python = sys.executable
        if self.tls:
            from tools.devcerts import write_set

            write_set(self.certs)
        try:
            for name in SERVICES:
                self._spawn(name, [python, "-m", f"nexus_{name}"], self._own_env(name, env))
                self._wait(name, functools.partial(self._grpc_ready, self.ports[name], name))
            config = self.data_dir / "envoy.yaml"
            config.write_text(
                render_envoy_config(
                    self.ports,
                    self.certs / "ca.pem" if self.tls else None,
                    rate_limited=self.rate_limited,
                )
            )
            envoy = str(Path(python).parent / "envoy")
            self._spawn(
                "envoy",
                [envoy, "-c", str(config), "--use-dynamic-base-id", "--log-level", "warn"],
                env,
            )
            self._wait("envoy", self._envoy_ready)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def main() -> None:
    data_dir = Path(os.environ.get("NEXUS_DATA_DIR", ROOT / ".nexus-data"))
    # e.g. NEXUS_DEV_REST_PORT=9080 when 8080 is taken.
    ports = {
        name: int(os.environ.get(f"NEXUS_DEV_{name.upper()}_PORT", default))
        for name, default in DEV_PORTS.items()
    }
    # NEXUS_DEV_TLS=true: the services' hops as deploy/k8s runs them (certificates in
    # the data directory's certs/, the gateway's gRPC port then speaks TLS too).
    tls = os.environ.get("NEXUS_DEV_TLS", "").strip().lower() in {"1", "true", "yes", "on"}
    stack = Stack(data_dir, ports, tls=tls)
    stack.start()
    tls_note = f" (TLS, CA {stack.certs / 'ca.pem'})" if tls else ""
    print(
        f"""
Nexus is running (SQLite in {data_dir}, logs in {data_dir / "logs"}).
  REST (Envoy):     {stack.rest_url}
  gRPC (gateway):   {stack.gateway_target}{tls_note}
  Envoy admin:      http://127.0.0.1:{stack.ports["envoy_admin"]}
  Metrics:          {stack.metrics_url("gateway")} (gateway)
                    {stack.metrics_url("broker")} (broker)
                    {stack.metrics_url("policy")} (policy)
  Admin API key:    {stack.admin_key}
  Environment:      {stack.env["NEXUS_ENVIRONMENT"]} (agents without bindings reach everything;
                    production refuses them: see the README's "Access")

Try:
  curl -H 'X-API-Key: {stack.admin_key}' {stack.rest_url}/v1/providers

Press Ctrl-C to stop.""",
        flush=True,
    )
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    # Explicit handlers for both: a launcher started in the background by a
    # shell inherits an ignored SIGINT, and Ctrl-C must still stop everything.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stopping:
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    print(f"{name} exited:\n{stack.log_tail(name)}", file=sys.stderr)
                    stopping = True
            time.sleep(0.5)
    finally:
        print("\nStopping Nexus...", flush=True)
        stack.stop()


if __name__ == "__main__":
    main()
