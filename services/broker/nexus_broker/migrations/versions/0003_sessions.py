"""Agent sessions, the keys that sign their tokens, and finding a provider's connections.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Sessions find a provider's connections when the caller names none.
    op.create_index("ix_connections_provider", "connections", ["provider_id", "status"])
    op.create_table(
        "agent_sessions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("agent_id", sa.String(63), nullable=False),
        sa.Column("provider_id", sa.String(36), nullable=False),
        sa.Column("provider_name", sa.String(63), nullable=False),
        sa.Column("connection_id", sa.String(36), nullable=True),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("acting_for", sa.String(255), nullable=True),
        sa.Column("tenant_id", sa.String(255), nullable=True),
        sa.Column("clearance_level", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("access_token_sealed", sa.LargeBinary, nullable=True),
    )
    op.create_index("ix_agent_sessions_expires_at", "agent_sessions", ["expires_at"])
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(32), primary_key=True),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("private_key_sealed", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retire_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("signing_keys")
    op.drop_index("ix_agent_sessions_expires_at", "agent_sessions")
    op.drop_table("agent_sessions")
    op.drop_index("ix_connections_provider", "connections")
