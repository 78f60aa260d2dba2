"""Authorization attempts remember where they lead and who may finish them.

``redirect_uri`` and ``authorization_url``: the per-provider callback and the
provider URL the start page sends the browser to. ``binding_hash``: SHA-256 of
the cookie of the browser that opened ``auth_url`` first. ``capture_checks``:
live credential checks spent on this state.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("authorization_attempts") as batch:
        batch.add_column(sa.Column("redirect_uri", sa.Text, nullable=True))
        batch.add_column(sa.Column("authorization_url", sa.Text, nullable=True))
        batch.add_column(sa.Column("binding_hash", sa.String(64), nullable=True))
        batch.add_column(
            sa.Column("capture_checks", sa.Integer, nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("authorization_attempts") as batch:
        batch.drop_column("capture_checks")
        batch.drop_column("binding_hash")
        batch.drop_column("authorization_url")
        batch.drop_column("redirect_uri")
