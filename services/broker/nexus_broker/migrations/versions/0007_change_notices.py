"""Change notices: every write of a connection or provider row tells the other replicas.

Triggers send ``pg_notify('nexus_broker', 'connection:<id>')`` or
``'provider:<id>'`` in the writing transaction, so a notice is delivered
exactly when the write becomes visible; replicas drop what they cached of that
row when they hear it. Provider client secrets live in the providers row, so
a secret change is a provider notice too.

An update that changes only a connection's refresh lease (``lease_until``,
``lease_owner``) sends nothing: no cache holds the lease, and claims, renewals
and releases are the refresh loop's most frequent writes. Every other column,
including any added later, is compared, so a new column cannot be forgotten.

PostgreSQL only: SQLite serves one process, whose own writes invalidate.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_CONNECTION_FUNCTION = """
CREATE FUNCTION nexus_broker_connection_notice() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND (to_jsonb(OLD) - 'lease_until' - 'lease_owner')
            = (to_jsonb(NEW) - 'lease_until' - 'lease_owner') THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('nexus_broker', 'connection:' || OLD.id);
    ELSE
        PERFORM pg_notify('nexus_broker', 'connection:' || NEW.id);
    END IF;
    RETURN NULL;
END
$$
"""

_PROVIDER_FUNCTION = """
CREATE FUNCTION nexus_broker_provider_notice() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('nexus_broker', 'provider:' || OLD.id);
    ELSE
        PERFORM pg_notify('nexus_broker', 'provider:' || NEW.id);
    END IF;
    RETURN NULL;
END
$$
"""


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if not _postgres():
        return
    op.execute(_CONNECTION_FUNCTION)
    op.execute(_PROVIDER_FUNCTION)
    op.execute(
        "CREATE TRIGGER connections_change_notice AFTER INSERT OR UPDATE OR DELETE "
        "ON connections FOR EACH ROW EXECUTE FUNCTION nexus_broker_connection_notice()"
    )
    op.execute(
        "CREATE TRIGGER providers_change_notice AFTER INSERT OR UPDATE OR DELETE "
        "ON providers FOR EACH ROW EXECUTE FUNCTION nexus_broker_provider_notice()"
    )


def downgrade() -> None:
    if not _postgres():
        return
    op.execute("DROP TRIGGER IF EXISTS providers_change_notice ON providers")
    op.execute("DROP TRIGGER IF EXISTS connections_change_notice ON connections")
    op.execute("DROP FUNCTION IF EXISTS nexus_broker_provider_notice()")
    op.execute("DROP FUNCTION IF EXISTS nexus_broker_connection_notice()")
