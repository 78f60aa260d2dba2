"""Drive load with a C generator and read back what it measured.

The figures come from ``h2load``. gRPC: one HTTP/2 connection with N streams in flight,
each a POST of a framed protobuf request read from a file. REST: N HTTP/1.1 connections
with one request each in flight, as REST clients usually hold them. Latency figures come
from every request, in h2load's per-request log.

``wrk`` cross-checks the REST figures: N HTTP/1.1 connections for a fixed time, its
summary printed by a Lua ``done`` hook in a form read back here. A timed run ends by
closing connections with a request still in flight; see ``wrk``.
"""

from __future__ import annotations

import re
import shutil
import signal
import statistics
import struct
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "Load",
    "grpc_frame",
    "h2load",
    "need",
    "parse_h2load",
    "parse_wrk",
    "percentile",
    "stop_on_sigterm",
    "wrk",
]


@dataclass(frozen=True)
class Load:
    """What one run measured. ``failed`` counts answers h2load saw fail (HTTP status
    other than 2xx/3xx, reset, timeout); gRPC statuses travel in trailers and are
    counted apart, by the services."""

    requests: int
    per_second: float
    mean_ms: float
    p99_ms: float
    failed: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"missing {', '.join(missing)}: install Debian's nghttp2-client and wrk "
            "(`make bench-tools` does)"
        )


def grpc_frame(message: bytes) -> bytes:
    """The gRPC wire framing of one message: uncompressed flag, 4-byte big-endian length."""
    return struct.pack(">BI", 0, len(message)) + message


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * fraction // 1))
    return sorted_values[int(rank) - 1]


def parse_h2load(output: str, log: str) -> Load:
    """h2load's summary for counts and rate; its per-request log for latency."""
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", output)
    counts = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", output)
    if rate is None or counts is None:
        raise RuntimeError(f"h2load printed no summary:\n{output}")
    total, succeeded = int(counts.group(1)), int(counts.group(2))
    latencies = sorted(
        int(line.split("\t")[2]) / 1000 for line in log.splitlines() if line.count("\t") == 2
    )
    return Load(
        requests=succeeded,
        per_second=float(rate.group(1)),
        mean_ms=statistics.fmean(latencies) if latencies else 0.0,
        p99_ms=percentile(latencies, 0.99),
        failed=total - succeeded,
    )


def h2load(
    url: str,
    headers: Mapping[str, str],
    requests: int,
    *,
    body: bytes | None = None,
    connections: int = 1,
    streams: int = 1,
    h1: bool = False,
) -> Load:
    """Send ``requests`` requests to ``url`` (a POST of ``body``, else a GET) over
    ``connections`` connections with ``streams`` in flight on each.

    A fixed count rather than a duration: h2load ends a timed run by resetting the
    requests still in flight, and the services rightly count those as CANCELLED."""
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as scratch:
        log = Path(scratch) / "log"
        args = ["h2load", "-n", str(requests), "-c", str(connections), "-m", str(streams)]
        args += ["-t", "1", f"--log-file={log}"]
        if body is not None:
            data = Path(scratch) / "body"
            data.write_bytes(body)
            args += ["-d", str(data)]
        if h1:
            args.append("--h1")
        for name, value in headers.items():
            args += ["-H", f"{name}: {value}"]
        done = subprocess.run(  # noqa: S603 (h2load from PATH, arguments built here)
            [*args, url], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"h2load failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return parse_h2load(done.stdout, log.read_text() if log.exists() else "")


# wrk's summary as one line: requests, seconds, mean and p99 latency (microseconds), then
# the errors it saw (connect, read, write, HTTP status >= 400, timeout).
_WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("nexus-wrk %d %f %f %f %d %d %d %d %d\\n",
    summary.requests, summary.duration / 1e6, latency.mean, latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def parse_wrk(output: str) -> Load:
    """The line the Lua ``done`` hook printed."""
    line = next((ln for ln in output.splitlines() if ln.startswith("nexus-wrk ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    fields = line.split()[1:]
    requests, seconds, mean_us, p99_us = int(fields[0]), *map(float, fields[1:4])
    failed = sum(int(count) for count in fields[4:])
    return Load(
        requests=requests - int(fields[7]),  # answers with an HTTP error are not successes
        per_second=round(requests / seconds, 2) if seconds else 0.0,
        mean_ms=mean_us / 1000,
        p99_ms=p99_us / 1000,
        failed=failed,
    )


def wrk(url: str, headers: Mapping[str, str], seconds: float, connections: int) -> Load:
    """GET ``url`` over ``connections`` HTTP/1.1 connections, one request in flight on
    each, for ``seconds``. When the time is up wrk closes its connections, and a request
    still in flight on one is cancelled: the servers count it as CANCELLED, up to one
    per connection, and neither side counts it as answered."""
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as scratch:
        script = Path(scratch) / "summary.lua"
        script.write_text(_WRK_SCRIPT)
        args = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(seconds))}s"]
        args += ["--latency", "-s", str(script)]
        for name, value in headers.items():
            args += ["-H", f"{name}: {value}"]
        done = subprocess.run(  # noqa: S603 (wrk from PATH, arguments built here)
            [*args, url], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return parse_wrk(done.stdout)


def stop_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so the stacks and servers a bench
    started are stopped by their ``finally`` blocks instead of left running."""

    def interrupted(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, interrupted)
