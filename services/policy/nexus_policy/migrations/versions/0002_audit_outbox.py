"""Audit events waiting to be handed to the broker.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_outbox",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(63), nullable=False),
        sa.Column("resource", sa.String(255), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
    )
    op.create_index("ix_audit_outbox_event_time", "audit_outbox", ["event_time"])


def downgrade() -> None:
    op.drop_index("ix_audit_outbox_event_time", "audit_outbox")
    op.drop_table("audit_outbox")
