"""Moved token endpoints wait for an admin's confirmation.

``endpoints_pending``: the provider's token or revocation endpoint changed
(by an update or a discovery re-fetch) while connections held tokens; no
refresh, code exchange or revocation goes there until ConfirmProviderEndpoints.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("providers") as batch:
        batch.add_column(
            sa.Column("endpoints_pending", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("providers") as batch:
        batch.drop_column("endpoints_pending")
