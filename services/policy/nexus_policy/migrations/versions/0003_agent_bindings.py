"""Agent bindings, and the time before which an agent's sessions are over.

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
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("bindings", sa.JSON, nullable=True))
        batch.add_column(sa.Column("sessions_valid_after", sa.DateTime(timezone=True)))
    op.execute("UPDATE agents SET sessions_valid_after = created_at")
    with op.batch_alter_table("agents") as batch:
        batch.alter_column(
            "sessions_valid_after", existing_type=sa.DateTime(timezone=True), nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("sessions_valid_after")
        batch.drop_column("bindings")
