"""The floor, running: the trivial gRPC server in its own process, Envoy with Nexus's
own config (``envoy/envoy.yaml``) pointed at it instead of the gateway, and the
zero-work relay in front of it (``bench.relay_server``), the shape's floor."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tools.devstack import ENVOY_PORTS, ROOT, free_port, render_envoy_config

__all__ = ["Floor", "running_floor"]

_STARTUP_SECONDS = 30.0


@dataclass(frozen=True)
class Floor:
    grpc_url: str  # h2load's base URL for the echo server
    rest_url: str  # Envoy, routing the REST surface to the echo server
    relay_url: str  # the relay forwarding every call to the echo server


def _wait(process: subprocess.Popen[bytes], ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited during start-up")
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:  # noqa: S310 (loopback URL)
            return bool(reply.status == 200)
    except OSError:
        return False


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def running_floor() -> Iterator[Floor]:
    ports = {name: free_port() for name in ENVOY_PORTS}
    relay_port = free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="nexus-bench-floor-") as scratch:
            echo = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                [sys.executable, "-m", "bench.echo_server", str(ports["gateway"])], cwd=ROOT
            )
            processes.append(echo)
            _wait(echo, lambda: _listening(ports["gateway"]), "the echo server")
            relay = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                [
                    sys.executable,
                    "-m",
                    "bench.relay_server",
                    str(relay_port),
                    str(ports["gateway"]),
                ],
                cwd=ROOT,
            )
            processes.append(relay)
            _wait(relay, lambda: _listening(relay_port), "the relay")
            config = Path(scratch) / "envoy.yaml"
            config.write_text(render_envoy_config(ports, rate_limited=False))
            envoy = str(Path(sys.executable).parent / "envoy")
            processes.append(
                subprocess.Popen(  # noqa: S603 (the venv's envoy binary)
                    [envoy, "-c", str(config), "--use-dynamic-base-id", "--log-level", "warn"],
                    cwd=ROOT,
                )
            )
            ready = f"http://127.0.0.1:{ports['envoy_admin']}/ready"
            _wait(processes[-1], lambda: _answers(ready), "the floor's Envoy")
            yield Floor(
                grpc_url=f"http://127.0.0.1:{ports['gateway']}",
                rest_url=f"http://127.0.0.1:{ports['rest']}",
                relay_url=f"http://127.0.0.1:{relay_port}",
            )
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=15)
