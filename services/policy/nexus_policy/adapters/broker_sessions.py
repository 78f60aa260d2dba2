"""Telling the broker, which holds sessions, that an agent's sessions are over."""

from __future__ import annotations

from nexus.broker.v1 import sessions_pb2, sessions_pb2_grpc
from nexus_common import InternalClient

__all__ = ["BrokerSessions"]


class BrokerSessions:
    def __init__(self, broker: InternalClient) -> None:
        self._broker = broker
        self._stub = sessions_pb2_grpc.SessionServiceStub(broker.channel)

    async def end_sessions(self, agent_id: str) -> None:
        await self._broker.call(
            self._stub.EndAgentSessions, sessions_pb2.EndAgentSessionsRequest(agent_id=agent_id)
        )
