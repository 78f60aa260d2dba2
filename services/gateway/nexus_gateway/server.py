"""Wiring: build the gateway from settings. Nothing is built at import time."""

from __future__ import annotations

from dataclasses import dataclass

from nexus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from nexus_common import ChangeFeed, InternalClient, NexusServer, agent_changes, build_server

from .agent_keys import AgentKeys
from .auth import GatewayAuthenticator
from .browser import BrowserServer, create_browser_app
from .servicers import (
    AgentServicer,
    AuditServicer,
    ConnectionServicer,
    ProviderServicer,
    SessionServicer,
)
from .settings import GatewaySettings

__all__ = ["Gateway", "create_gateway"]

SERVICE_NAMES = tuple(s.full_name for s in gateway_pb2.DESCRIPTOR.services_by_name.values())


@dataclass
class Gateway:
    server: NexusServer
    browser: BrowserServer
    broker: InternalClient
    policy: InternalClient
    # The policy's agent changes, which keep the agent keys' cache right.
    feed: ChangeFeed

    async def start_caches(self, *, wait_seconds: float = 0.0) -> None:
        """Follow the policy's agent changes; agent keys are cached only while
        the feed is up."""
        await self.feed.start(wait_seconds=wait_seconds)

    async def close(self) -> None:
        await self.feed.close()
        self.browser.stop()
        await self.broker.close()
        await self.policy.close()


def create_gateway(settings: GatewaySettings) -> Gateway:
    broker = InternalClient(
        "broker",
        settings.broker_target,
        settings.internal_token,
        settings.upstream_timeout_seconds,
        tls=settings.tls,
        proofs=settings.caller_proofs,
        keepalive_seconds=settings.peer_silence_seconds,
    )
    policy = InternalClient(
        "policy",
        settings.policy_target,
        settings.internal_token,
        settings.upstream_timeout_seconds,
        tls=settings.tls,
        proofs=settings.caller_proofs,
        keepalive_seconds=settings.peer_silence_seconds,
    )
    providers = ProviderServicer(broker)
    audit = AuditServicer(broker)
    connections = ConnectionServicer(broker)
    agents = AgentServicer(policy)
    sessions = SessionServicer(broker)
    agent_keys = AgentKeys(
        policy,
        settings.cache_max_age_seconds,
        unknown_key_seconds=settings.unknown_key_cache_seconds,
    )
    feed = ChangeFeed(
        "policy",
        "nexus_agents",
        agent_changes(policy, settings.internal_token),
        agent_keys.changed,
        on_gap=agent_keys.suspend,
        on_ready=agent_keys.resume,
        idle_seconds=settings.peer_silence_seconds,
    )
    server = build_server(
        address=settings.listen,
        registrars=[
            lambda s: gateway_pb2_grpc.add_ProviderServiceServicer_to_server(providers, s),
            lambda s: gateway_pb2_grpc.add_AuditServiceServicer_to_server(audit, s),
            lambda s: gateway_pb2_grpc.add_ConnectionServiceServicer_to_server(connections, s),
            lambda s: gateway_pb2_grpc.add_AgentServiceServicer_to_server(agents, s),
            lambda s: gateway_pb2_grpc.add_SessionServiceServicer_to_server(sessions, s),
        ],
        service_names=SERVICE_NAMES,
        authenticate=GatewayAuthenticator(
            settings.admin_keys, agent_keys, settings.resource_server_keys
        ),
        credentials=settings.public_tls.server_credentials() if settings.public_tls else None,
        health_listen=settings.health_listen,
        keepalive_seconds=settings.peer_silence_seconds,
    )
    browser = BrowserServer(
        create_browser_app(broker, secure_cookies=settings.public_base_url.startswith("https://")),
        settings.http_listen,
        settings.public_tls,
    )
    return Gateway(server, browser, broker, policy, feed)
