"""Cleaning up processes and servers a test started, whatever state they are in."""

from __future__ import annotations

import subprocess
from types import TracebackType
from typing import Self

__all__ = ["StopsOnExit", "reap"]


class StopsOnExit:
    """A server a ``with`` block stops on the way out, however the block ends."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


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
