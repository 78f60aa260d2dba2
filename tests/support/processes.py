"""Cleaning up processes a test started, whatever state they are in."""

from __future__ import annotations

import subprocess

__all__ = ["reap"]


def reap(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process`` if it still runs, wait for it and close its output pipe."""
    if process.poll() is None:
        process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()
