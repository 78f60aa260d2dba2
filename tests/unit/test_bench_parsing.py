"""The bench's own arithmetic: gRPC framing, h2load's report, the services' answer counts."""

from __future__ import annotations

from nexus.broker.v1 import connections_pb2

from bench.loadgen import grpc_frame, parse_h2load, percentile
from bench.metrics import handled

H2LOAD_OUTPUT = """
finished in 27.18ms, 1177.38 req/s, 79.37KB/s
requests: 32 total, 32 started, 32 done, 30 succeeded, 2 failed, 0 errored, 0 timeout
status codes: 30 2xx, 0 3xx, 2 4xx, 0 5xx
"""


def test_a_grpc_frame_is_flag_length_and_message() -> None:
    message = connections_pb2.GetTokenRequest(connection_id="c-1").SerializeToString()
    frame = grpc_frame(message)
    assert frame[0] == 0 and int.from_bytes(frame[1:5], "big") == len(message)
    assert connections_pb2.GetTokenRequest.FromString(frame[5:]).connection_id == "c-1"


def test_h2load_report_gives_rate_failures_and_latency_from_every_request() -> None:
    log = "".join(f"1796063528307032\t200\t{us}\n" for us in (1000, 2000, 3000, 10000))
    load = parse_h2load(H2LOAD_OUTPUT, log)
    assert (load.requests, load.per_second, load.failed) == (30, 1177.38, 2)
    assert load.mean_ms == 4.0 and load.p99_ms == 10.0


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.99) == 99.0 and percentile(values, 0.5) == 50.0
    assert percentile([], 0.99) == 0.0


def test_answers_are_counted_by_service_method_and_code() -> None:
    exposition = """# HELP grpc_server_handled_total RPCs answered
# TYPE grpc_server_handled_total counter
grpc_server_handled_total{grpc_service="a.S",grpc_method="Get",grpc_code="OK"} 7.0
grpc_server_handled_total{grpc_service="a.S",grpc_method="Get",grpc_code="CANCELLED"} 2.0
grpc_server_handling_seconds_count{grpc_service="a.S",grpc_method="Get"} 9.0
"""
    counts = handled(exposition)
    assert counts == {("a.S", "Get", "OK"): 7, ("a.S", "Get", "CANCELLED"): 2}
