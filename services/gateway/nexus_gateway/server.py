"""Wiring: build the gateway from settings. Nothing is built at import time."""

from __future__ import annotations

from dataclasses import dataclass

from nexus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from nexus_common import InternalClient, NexusServer, build_server

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

    async def close(self) -> None:
        self.browser.stop()
        await self.broker.close()
        await self.policy.close()


def create_gateway(settings: GatewaySettings) -> Gateway:
    broker = InternalClient(
        "broker",
        settings.broker_target,
        settings.internal_token,
        settings.upstream_timeout_seconds,
    )
    policy = InternalClient(
        "policy",
        settings.policy_target,
        settings.internal_token,
        settings.upstream_timeout_seconds,
    )
    providers = ProviderServicer(broker)
    audit = AuditServicer(broker)
    connections = ConnectionServicer(broker)
    agents = AgentServicer(policy)
    sessions = SessionServicer(broker)
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
        authenticate=GatewayAuthenticator(settings.admin_keys, policy),
    )
    browser = BrowserServer(
        create_browser_app(broker, secure_cookies=settings.public_base_url.startswith("https://")),
        settings.http_listen,
    )
    return Gateway(server, browser, broker, policy)
