"""Running a test server written for Node.js (the OAuth servers from npm).

The server prints one JSON line when it listens. Its stdin stays open for its
lifetime: if the test process dies without ``stop()``, the pipe closes and a
server started with ``--exit-on-stdin-eof`` exits instead of lingering. stderr
goes to a file so a failed start can be explained without a reader thread.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.processes import StopsOnExit

__all__ = ["NodeServer", "start_node_server"]

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


class NodeServer(StopsOnExit):
    """A running server; stop it with ``stop()`` or by leaving a ``with`` block."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process

    def stop(self) -> None:
        _stop(self._process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            pipe.close()


def start_node_server(
    directory: Path, package: str, args: list[str], what: str
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start ``directory/server.mjs`` and return it with its ready line."""
    if not (directory / "node_modules" / package).is_dir():
        raise RuntimeError(
            f"the {what} is not installed: run "
            f"`npm ci --prefix {directory.relative_to(REPO_ROOT)}` in {REPO_ROOT}"
        )
    node = shutil.which("node")
    if node is None:
        raise RuntimeError(f"`node` is not on PATH; the {what} needs Node.js 20 or newer")
    cmd = [node, str(directory / "server.mjs"), *args, "--exit-on-stdin-eof"]
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            cmd, cwd=directory, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        )
        try:
            ready: dict[str, Any] = json.loads(_read_ready_line(process))
        except BaseException as failure:
            process.kill()
            _stop(process)
            stderr.seek(0)
            detail = stderr.read().decode(errors="replace").strip()
            raise RuntimeError(f"{what} did not start: {failure}\n{detail}") from failure
    return process, ready


def _read_ready_line(process: subprocess.Popen[bytes]) -> str:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    received = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in received:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no ready line within {STARTUP_TIMEOUT_S:.0f}s")
            if selector.select(remaining):
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(f"server exited with code {process.wait()}")
                received += chunk
    return received.partition(b"\n")[0].decode()
