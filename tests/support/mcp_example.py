"""Running examples/mcp_crm_server.py as users do: ``python examples/mcp_crm_server.py``.

    with start_example_server(env) as server:
        server.url        # http://127.0.0.1:<port>/mcp
        server.log()      # everything it wrote to stdout and stderr so far

The server runs in a subprocess on a free port with DEBUG logging, its output
going to a file, and counts as started once its protected resource metadata
answers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import httpx

from tests.support.node_server import REPO_ROOT
from tests.support.processes import StopsOnExit, reap
from tools.devstack import free_port

__all__ = ["EXAMPLE", "ExampleServer", "start_example_server"]

EXAMPLE = REPO_ROOT / "examples" / "mcp_crm_server.py"
STARTUP_TIMEOUT_S = 30.0


class ExampleServer(StopsOnExit):
    """A running example server; stop it with ``stop()`` or by leaving a ``with`` block."""

    def __init__(self, process: subprocess.Popen[bytes], output: IO[bytes], port: int) -> None:
        self._process = process
        self._output = output
        self.origin = f"http://127.0.0.1:{port}"
        self.url = f"{self.origin}/mcp"
        self.metadata_url = f"{self.origin}/.well-known/oauth-protected-resource/mcp"

    def log(self) -> str:
        """All the server has written to stdout and stderr so far."""
        return Path(self._output.name).read_text(errors="replace")

    def stop(self) -> None:
        reap(self._process)
        self._output.close()


def start_example_server(env: dict[str, str]) -> ExampleServer:
    """Start the example with ``env`` added to ours (minus any Nexus keys of ours)."""
    port = free_port()
    inherited = {
        k: v for k, v in os.environ.items() if k not in ("NEXUS_API_KEY", "NEXUS_AGENT_KEY")
    }
    output = tempfile.NamedTemporaryFile(prefix="mcp-example-", suffix=".log")
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE)],
        cwd=REPO_ROOT,
        env={**inherited, **env, "MCP_PORT": str(port), "LOG_LEVEL": "DEBUG"},
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    server = ExampleServer(process, output, port)
    try:
        _wait_until_serving(server, process)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_until_serving(server: ExampleServer, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the example MCP server exited:\n{server.log()}")
        try:
            if httpx.get(server.metadata_url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the example MCP server did not start:\n{server.log()}")
        # Polling a process's port: there is no event to wait on.
        time.sleep(0.1)
