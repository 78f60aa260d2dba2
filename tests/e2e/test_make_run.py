"""`make run`'s launcher: prints where everything is, and Ctrl-C stops it all."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.processes import reap
from tools.devstack import DEV_PORTS, ROOT, free_port


def _read_until(process: subprocess.Popen[bytes], marker: str, timeout: float) -> str:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while marker.encode() not in seen:
            assert time.monotonic() < deadline, f"no {marker!r} in:\n{seen.decode()}"
            assert process.poll() is None, f"launcher exited:\n{seen.decode()}"
            if selector.select(1):
                seen += os.read(fd, 65536)
    return seen.decode()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_run_prints_addresses_and_key_then_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    ports = {name: free_port() for name in DEV_PORTS}
    env = {
        **os.environ,
        "NEXUS_DATA_DIR": str(tmp_path / "data"),
        **{f"NEXUS_DEV_{name.upper()}_PORT": str(port) for name, port in ports.items()},
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.devstack"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        banner = _read_until(process, "Press Ctrl-C", timeout=90)
        assert f"REST (Envoy):     http://127.0.0.1:{ports['rest']}" in banner
        assert f"gRPC (gateway):   127.0.0.1:{ports['gateway']}" in banner
        key = banner.split("Admin API key:")[1].split()[0]
        assert "Environment:      development" in banner
        listed = httpx.get(
            f"http://127.0.0.1:{ports['rest']}/v1/providers", headers={"X-API-Key": key}
        )
        assert listed.status_code == 200 and listed.json() == {
            "providers": [],
            "next_page_token": "",
        }
        assert (tmp_path / "data" / "broker.db").exists()
        for name in ("gateway", "broker", "policy"):
            url = f"http://127.0.0.1:{ports[f'{name}_metrics']}/metrics"
            assert f"{url} ({name})" in banner
            assert "grpc_server_handled_total" in httpx.get(url).text
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        reap(process)
    for name in ports:
        assert not _listening(ports[name]), f"{name} still listening after Ctrl-C"
