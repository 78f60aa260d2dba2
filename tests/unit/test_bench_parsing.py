"""The bench's own arithmetic: gRPC framing, h2load's and wrk's reports, the services'
answer counts."""

from __future__ import annotations

from collections import Counter

from nexus.broker.v1 import connections_pb2

from bench.hot_path import Point, Probe, _checked
from bench.loadgen import Load, grpc_frame, parse_h2load, parse_wrk, percentile
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


WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:8080/v1/token/c-1
  1 threads and 16 connections
nexus-wrk 2000 2.000000 1500.500000 9000.000000 0 0 0 3 0
"""


def test_wrk_summary_gives_rate_latency_and_http_errors() -> None:
    load = parse_wrk(WRK_OUTPUT)
    assert (load.requests, load.per_second, load.failed) == (1997, 1000.0, 3)
    assert load.mean_ms == 1.5005 and load.p99_ms == 9.0


def _wrk_point(answered: dict[tuple[str, str, str], int], requests: int = 100) -> Point:
    load = Load(requests=requests, per_second=50.0, mean_ms=1.0, p99_ms=2.0, failed=0)
    point = Point("GetToken REST (wrk)", 16, load, load, 0, 0, generator="wrk")
    probe = Probe("GetToken REST", "rest", "/v1/token/c", {}, ("a.Gateway", "GetToken"))
    return _checked(point, probe, Counter(answered), counted=True)


def test_requests_cut_off_by_the_end_of_a_timed_run_are_reported_apart() -> None:
    point = _wrk_point(
        {
            ("a.Gateway", "GetToken", "OK"): 110,
            ("a.Gateway", "GetToken", "CANCELLED"): 16,
            ("b.Broker", "GetToken", "CANCELLED"): 12,
        }
    )
    assert point.problems == [] and point.non_ok == 0
    assert point.cancelled_at_end == {"a.Gateway": 16, "b.Broker": 12}


def test_more_cancelled_than_connections_or_another_error_is_not_a_result() -> None:
    too_many = _wrk_point(
        {("a.Gateway", "GetToken", "OK"): 100, ("a.Gateway", "GetToken", "CANCELLED"): 17}
    )
    assert too_many.non_ok == 17 and too_many.problems
    failed = _wrk_point(
        {("a.Gateway", "GetToken", "OK"): 100, ("b.Broker", "GetToken", "INTERNAL"): 1}
    )
    assert failed.non_ok == 1 and failed.problems
    short = _wrk_point({("a.Gateway", "GetToken", "OK"): 99})
    assert short.problems == ["the service counted 99 OK answers for 100 requests"]
