"""Envoy's rate limits, through the real binary: a token bucket per key and one
per client address (envoy/envoy.yaml, local_ratelimit). The config is the
committed one, on ports of its own in front of the stack's gateway, with its
buckets made small and slow to refill, so that a test can spend one and see
the next request refused: 429 with the REST error shape and a Retry-After,
RESOURCE_EXHAUSTED over native gRPC, and never for another key or address."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from nexus.broker.v1 import providers_pb2
from nexus.gateway.v1 import gateway_pb2_grpc

from tests.support.processes import reap
from tools.devstack import ROOT, Stack, free_port, render_envoy_config

# A bucket the test spends: it holds this many and refills not within a test.
SPENT = "{ max_tokens: %d, tokens_per_fill: %d, fill_interval: 3600s }"
BUCKET = re.compile(r"token_bucket: \{[^}]*\}(?=  # per (address|admin key|agent key)\n)")


def _limited(ports: dict[str, int], rate_limited: bool, **tokens: int) -> str:
    """The committed config on ``ports``, each named bucket holding ``tokens``."""
    text = render_envoy_config(ports, rate_limited=rate_limited)
    names = {"address": "per_address", "admin key": "per_admin_key", "agent key": "per_agent_key"}

    def bucket(match: re.Match[str]) -> str:
        held = tokens.get(names[match.group(1)], 1000)
        return "token_bucket: " + SPENT % (held, held)

    limited, count = BUCKET.subn(bucket, text)
    assert count == 3, "envoy.yaml names its per-address and per-key buckets"
    return limited


@contextlib.contextmanager
def envoy(
    stack: Stack, tmp_path: Path, *, rate_limited: bool = True, **tokens: int
) -> Iterator[str]:
    ports = {**stack.ports, "rest": free_port(), "envoy_admin": free_port()}
    config = tmp_path / "envoy.yaml"
    config.write_text(_limited(ports, rate_limited, **tokens))
    binary = str(Path(sys.executable).parent / "envoy")
    process = subprocess.Popen(
        [binary, "-c", str(config), "--use-dynamic-base-id", "--log-level", "warn"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not _ready(ports["envoy_admin"]):
            assert process.poll() is None, process.stdout and process.stdout.read()
            assert time.monotonic() < deadline, "envoy did not start"
            time.sleep(0.1)
        yield f"127.0.0.1:{ports['rest']}"
    finally:
        reap(process)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def _rate_limited(reply: httpx.Response) -> None:
    assert reply.status_code == 429, reply.text
    assert reply.headers["retry-after"] == "1"
    body = reply.json()
    assert body["code"] == 8
    assert [d["reason"] for d in body["details"]] == ["RATE_LIMITED"]


def test_a_key_over_its_limit_gets_429_and_other_keys_do_not(stack: Stack, tmp_path: Path) -> None:
    with (
        envoy(stack, tmp_path, per_admin_key=3) as address,
        httpx.Client(base_url=f"http://{address}", timeout=30) as rest,
    ):
        admin = {"X-API-Key": stack.admin_key}
        assert [rest.get("/v1/providers", headers=admin).status_code for _ in range(3)] == [200] * 3
        _rate_limited(rest.get("/v1/providers", headers=admin))
        # Another key still reaches the gateway, which judges it.
        other = rest.get("/v1/providers", headers={"X-API-Key": "nxa_" + "x" * 40})
        assert other.status_code == 401, other.text

        # Native gRPC with the spent key: RESOURCE_EXHAUSTED, from Envoy.
        with grpc.insecure_channel(address) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                gateway_pb2_grpc.ProviderServiceStub(channel).ListProviders(
                    providers_pb2.ListProvidersRequest(),
                    metadata=(("x-api-key", stack.admin_key),),
                    timeout=30,
                )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_an_address_over_its_limit_gets_429_whatever_key_it_sends(
    stack: Stack, tmp_path: Path
) -> None:
    with (
        envoy(stack, tmp_path, per_address=5) as address,
        httpx.Client(base_url=f"http://{address}", timeout=30) as rest,
    ):
        # A guesser trying a new agent key each time: each is refused by the
        # gateway until the address has spent its bucket.
        statuses = [
            rest.get(
                "/v1/token/c1", headers={"Authorization": f"Bearer nxk_guess{i}_{'y' * 40}"}
            ).status_code
            for i in range(5)
        ]
        assert statuses == [401] * 5
        _rate_limited(
            rest.get("/v1/token/c1", headers={"Authorization": f"Bearer nxk_guess5_{'y' * 40}"})
        )
        _rate_limited(rest.get("/v1/providers", headers={"X-API-Key": stack.admin_key}))


def test_the_benchs_config_has_no_limits(stack: Stack, tmp_path: Path) -> None:
    """The bench loads one address and one key past any limit, on purpose."""
    with (
        envoy(stack, tmp_path, rate_limited=False, per_admin_key=1, per_address=1) as address,
        httpx.Client(base_url=f"http://{address}", timeout=30) as rest,
    ):
        admin = {"X-API-Key": stack.admin_key}
        assert [rest.get("/v1/providers", headers=admin).status_code for _ in range(3)] == [200] * 3
