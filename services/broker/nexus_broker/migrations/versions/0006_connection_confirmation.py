"""Connections the app confirms before they become active.

``confirmation_required``: the completed connection waits as ``unconfirmed``
until ConfirmConnection. ``confirmation_hash``: SHA-256 of the one-time code the
browser brought to ``return_url``, cleared when the code is used.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("authorization_attempts") as batch:
        batch.add_column(
            sa.Column(
                "confirmation_required", sa.Boolean, nullable=False, server_default=sa.false()
            )
        )
        batch.add_column(sa.Column("confirmation_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("authorization_attempts") as batch:
        batch.drop_column("confirmation_hash")
        batch.drop_column("confirmation_required")
