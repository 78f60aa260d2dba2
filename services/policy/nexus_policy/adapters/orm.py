"""The policy service's tables: agents and their keys."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = ["agent_keys", "agents", "audit_outbox", "metadata"]

metadata = MetaData()

agents = Table(
    "agents",
    metadata,
    Column("agent_id", String(63), primary_key=True),
    Column("description", Text, nullable=False),
    Column("allowed_scopes", JSON, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("key_id", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # {"providers": [...], "workspaces": [...], ...}; NULL for an unbound agent.
    Column("bindings", JSON, nullable=True),
    Column("sessions_valid_after", DateTime(timezone=True), nullable=False),
)

agent_keys = Table(
    "agent_keys",
    metadata,
    Column("key_id", String(16), primary_key=True),
    Column(
        "agent_id",
        String(63),
        ForeignKey("agents.agent_id", ondelete="CASCADE"),
        nullable=False,
    ),
    # SHA-256 of the whole key; the key itself is never stored.
    Column("digest", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Set when a rotation retires the key; NULL while it is the current key.
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Index("ix_agent_keys_agent_id", "agent_id"),
)

# Audit events waiting to be handed to the broker, which keeps the one trail.
# Written in the same transaction as the change they record (an outbox), so a
# change is never without its event, nor an event without its change.
audit_outbox = Table(
    "audit_outbox",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("actor", String(255), nullable=False),
    Column("action", String(63), nullable=False),
    Column("resource", String(255), nullable=False),
    Column("event_time", DateTime(timezone=True), nullable=False),
    Column("details", JSON, nullable=False),
    Index("ix_audit_outbox_event_time", "event_time"),
)
