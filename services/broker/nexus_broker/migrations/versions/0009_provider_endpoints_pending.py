"""Moved token endpoints wait for an admin's confirmation.

``endpoints_moved_by``: who changed the provider's token or revocation
endpoint (an admin's audit name, or "discovery" for a re-fetch) while
connections held tokens or awaited a code; no refresh, code exchange or
revocation goes there until ConfirmProviderEndpoints clears it.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("providers") as batch:
        batch.add_column(sa.Column("endpoints_moved_by", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("providers") as batch:
        batch.drop_column("endpoints_moved_by")
