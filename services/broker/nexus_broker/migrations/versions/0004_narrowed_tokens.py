"""Narrowed provider tokens shared by sessions asking the same scopes.

A session no longer keeps a token of its own: it points at the narrowed token
it handed out. Tokens sealed on old session rows are dropped with the column;
they lapse at their expiry at the provider.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "narrowed_tokens",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("connection_id", sa.String(36), nullable=False),
        sa.Column("agent_id", sa.String(63), nullable=False),
        sa.Column("scope_key", sa.String(64), nullable=False),
        sa.Column("access_token_sealed", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_narrowed_tokens_key", "narrowed_tokens", ["connection_id", "agent_id", "scope_key"]
    )
    op.create_index("ix_narrowed_tokens_agent", "narrowed_tokens", ["agent_id"])
    with op.batch_alter_table("agent_sessions") as batch:
        batch.drop_column("access_token_sealed")
        batch.add_column(sa.Column("narrowed_token_id", sa.String(36), nullable=True))
    op.create_index("ix_agent_sessions_agent", "agent_sessions", ["agent_id", "closed_at"])


def downgrade() -> None:
    op.drop_index("ix_agent_sessions_agent", "agent_sessions")
    with op.batch_alter_table("agent_sessions") as batch:
        batch.drop_column("narrowed_token_id")
        batch.add_column(sa.Column("access_token_sealed", sa.LargeBinary, nullable=True))
    op.drop_index("ix_narrowed_tokens_agent", "narrowed_tokens")
    op.drop_index("ix_narrowed_tokens_key", "narrowed_tokens")
    op.drop_table("narrowed_tokens")
