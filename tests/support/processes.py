"""Cleaning up processes a test started, whatever state they are in."""

from __future__ import annotations

import subprocess

__all__ = ["reap"]


def reap(process: subprocess.Popen[bytes]) -> None:
    """Stop ``process`` if it still runs (politely first, so a launcher can stop
    its own children), wait for it and close its output pipe."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()
