"""The app's tenant of each connection's workspace.

``tenant_id``, given at RequestConnection: an on-behalf-of session reaches the
connection only for a user of that tenant, so that two tenants' users with the
same ids never reach each other's connections. Existing rows belong to no
tenant (""), as before.

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
    with op.batch_alter_table("connections") as batch:
        batch.add_column(sa.Column("tenant_id", sa.String(255), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("connections") as batch:
        batch.drop_column("tenant_id")
