"""Tracing across the running stack: a REST request through Envoy becomes one
trace over gateway, broker and policy, exported over OTLP/gRPC to a real
receiver, continuing the caller's own trace context."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.e2e.test_rest_sessions import connect, ok
from tests.support.backend_auth_server import BackendAuthServer
from tests.support.oidc_server import start_oidc_server
from tests.support.otlp_collector import ExportedSpan, OtlpCollector, start_otlp_collector
from tools.devstack import Stack

SESSION_METHOD = "nexus.gateway.v1.SessionService/CreateAgentSession"
AUTHENTICATE = "nexus.policy.v1.AgentRegistryService/AuthenticateAgent"
BROKER_SESSION = "nexus.broker.v1.SessionService/CreateAgentSession"
EVALUATE = "nexus.policy.v1.PolicyService/AuthorizeAccess"


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpCollector]:
    with start_otlp_collector() as running:
        yield running


@pytest.fixture(scope="module")
def stack_env(collector: OtlpCollector) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        # Export within a tenth of a second rather than five.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


@pytest.fixture(scope="module")
def agent_key(stack: Stack, rest: httpx.Client) -> str:
    admin = {"X-API-Key": stack.admin_key}
    provider = {"name": "internal-ops", "auth_type": "nexus", "scopes": ["acme:gliding"]}
    assert rest.post("/v1/providers", json=provider, headers=admin).status_code == 200
    agent = {"agent_id": "ops-agent", "allowed_scopes": ["acme:gliding"]}
    created = rest.post("/admin/v1/agents", json=agent, headers=admin)
    assert created.status_code == 200, created.text
    key: str = created.json()["agent_key"]
    return key


@pytest.fixture(scope="module")
def rest(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.rest_url, timeout=30) as client:
        yield client


def request_session(rest: httpx.Client, key: str, headers: dict[str, str]) -> None:
    asked = {"agent_id": "ops-agent", "provider": "internal-ops", "scopes": ["acme:gliding"]}
    response = rest.post(
        "/v1/agent-sessions",
        content=json.dumps(asked),
        headers={"Authorization": f"Bearer {key}", **headers},
    )
    assert response.status_code == 200, response.text


def one(spans: list[ExportedSpan], service: str, kind: str, method: str) -> ExportedSpan:
    (span,) = [
        s for s in spans if s.service == service and s.kind == kind and s.name == f"/{method}"
    ]
    return span


def whole_trace(
    collector: OtlpCollector, new: Callable[[str], bool], servers: int = 4
) -> list[ExportedSpan]:
    """The spans of one request's trace, once its server spans have all been
    exported: four when the caches are cold (gateway, broker, and the policy
    service twice), two when warm (the policy service is not asked)."""

    def complete(spans: list[ExportedSpan]) -> bool:
        return sum(new(s.trace_id) and s.kind == "SERVER" for s in spans) >= servers

    return [s for s in collector.wait_for(complete) if new(s.trace_id)]


def test_a_request_is_one_trace_across_the_services_continuing_the_callers(
    stack: Stack, rest: httpx.Client, agent_key: str, collector: OtlpCollector
) -> None:
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)

    request_session(rest, agent_key, {"traceparent": f"00-{trace_id}-{caller_span}-01"})

    spans = whole_trace(collector, lambda trace: trace == trace_id)
    gateway = one(spans, "nexus-gateway", "SERVER", SESSION_METHOD)
    assert gateway.parent_span_id == caller_span
    # The gateway authenticated the agent's key with the policy service...
    authenticate = one(spans, "nexus-gateway", "CLIENT", AUTHENTICATE)
    assert authenticate.parent_span_id == gateway.span_id
    assert one(spans, "nexus-policy", "SERVER", AUTHENTICATE).parent_span_id == authenticate.span_id
    # ...then asked the broker, which asked the policy service for its decision.
    forward = one(spans, "nexus-gateway", "CLIENT", BROKER_SESSION)
    assert forward.parent_span_id == gateway.span_id
    broker = one(spans, "nexus-broker", "SERVER", BROKER_SESSION)
    assert broker.parent_span_id == forward.span_id
    evaluate = one(spans, "nexus-broker", "CLIENT", EVALUATE)
    assert evaluate.parent_span_id == broker.span_id
    decided = one(spans, "nexus-policy", "SERVER", EVALUATE)
    assert decided.parent_span_id == evaluate.span_id
    assert broker.attributes["rpc.grpc.status_code"] == 0

    everything = json.dumps([span.attributes for span in collector.spans()])
    assert agent_key not in everything and "Bearer" not in everything
    assert not [s for s in collector.spans() if "grpc.health" in s.name], "probes make no spans"
    assert f"trace={trace_id}" in stack.log_tail("gateway", 200)
    assert f"trace={trace_id}" in stack.log_tail("policy", 200)


def test_a_request_without_trace_context_starts_a_trace_at_the_gateway(
    rest: httpx.Client, agent_key: str, collector: OtlpCollector
) -> None:
    before = {s.trace_id for s in collector.spans()}

    request_session(rest, agent_key, {})

    def ours(span: ExportedSpan) -> bool:
        # Other traces start meanwhile too (the policy service forwarding audit events).
        return span.trace_id not in before and span.name == f"/{SESSION_METHOD}"

    (gateway,) = [s for s in collector.wait_for(lambda spans: any(map(ours, spans))) if ours(s)]
    assert gateway.parent_span_id == "" and gateway.service == "nexus-gateway"
    spans = whole_trace(collector, lambda trace: trace == gateway.trace_id, servers=2)
    # The agent's key and grant may come from the gateway's and broker's caches
    # (an earlier test warmed them), so the policy service may not be in it.
    assert {"nexus-gateway", "nexus-broker"} <= {s.service for s in spans}
    broker = one(spans, "nexus-broker", "SERVER", BROKER_SESSION)
    forward = one(spans, "nexus-gateway", "CLIENT", BROKER_SESSION)
    assert broker.parent_span_id == forward.span_id


def test_calls_out_of_nexus_are_spans_and_the_customer_backend_joins_the_trace(
    stack: Stack,
    rest: httpx.Client,
    agent_key: str,
    collector: OtlpCollector,
    backend: BackendAuthServer,
) -> None:
    trace_id = secrets.token_hex(16)
    user = backend.issue_token("sarah", permissions=["acme:gliding"])
    asked = {
        "agent_id": "ops-agent",
        "provider": "internal-ops",
        "scopes": ["acme:gliding"],
        "user_context_token": user,
    }
    response = rest.post(
        "/v1/obo-sessions",
        json=asked,
        headers={
            "Authorization": f"Bearer {agent_key}",
            "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
        },
    )
    assert response.status_code == 200, response.text

    spans = collector.wait_for(
        lambda spans: any(
            s.trace_id == trace_id and s.kind == "CLIENT" and s.name.startswith("GET ")
            for s in spans
        )
    )
    (outbound,) = [s for s in spans if s.trace_id == trace_id and s.name == "GET BACKEND_AUTH_URL"]
    decided = one([s for s in spans if s.trace_id == trace_id], "nexus-policy", "SERVER", EVALUATE)
    assert outbound.service == "nexus-policy" and outbound.parent_span_id == decided.span_id
    assert outbound.attributes["http.response.status_code"] == 200
    assert outbound.attributes["nexus.outcome"] == "accepted"
    assert outbound.attributes["url.path"] == "/auth/me"
    assert user not in json.dumps([s.attributes for s in spans])
    # The backend got the trace context: its own spans would join this trace.
    assert backend.traceparents[-1].split("-")[1:3] == [trace_id, outbound.span_id]


def test_a_provider_refresh_is_a_span_of_the_broker(
    stack: Stack, rest: httpx.Client, collector: OtlpCollector
) -> None:
    admin = {"X-API-Key": stack.admin_key}
    with start_oidc_server() as idp:
        provider = ok(
            rest.post(
                "/v1/providers",
                headers=admin,
                json={
                    "name": "traced-crm",
                    "auth_type": "oauth2",
                    "client_id": "CLIENT_ID",
                    "client_secret": "CLIENT_SECRET",
                    "auth_url": f"{idp.issuer}/authorize",
                    "token_url": f"{idp.issuer}/token",
                    "scopes": ["crm:read"],
                    "params": {"skip_scope_on_exchange": True},
                },
            )
        )
        connection_id = connect(rest, admin, provider["id"], ["crm:read"])
        trace_id = secrets.token_hex(16)
        traced = {**admin, "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
        ok(rest.post(f"/v1/refresh/{connection_id}", headers=traced))

    def refreshed(spans: list[ExportedSpan]) -> bool:
        # Both spans: the outbound one ends first and may be exported in an earlier batch.
        # The broker's server span itself, not the gateway's client span of the same name,
        # which each service exports in its own batches.
        seen = {(s.service, s.kind, s.name) for s in spans if s.trace_id == trace_id}
        return {
            ("nexus-broker", "CLIENT", "POST provider refresh_token"),
            ("nexus-broker", "SERVER", "/nexus.broker.v1.ConnectionService/RefreshConnection"),
        } <= seen

    spans = [s for s in collector.wait_for(refreshed) if s.trace_id == trace_id]
    (outbound,) = [s for s in spans if s.name == "POST provider refresh_token"]
    broker = one(
        spans, "nexus-broker", "SERVER", "nexus.broker.v1.ConnectionService/RefreshConnection"
    )
    assert outbound.service == "nexus-broker" and outbound.kind == "CLIENT"
    assert outbound.parent_span_id == broker.span_id
    assert outbound.attributes["http.response.status_code"] == 200
    assert outbound.attributes["url.path"] == "/token"
