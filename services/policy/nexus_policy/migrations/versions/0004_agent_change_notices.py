"""Change notices: every write to an agent or its keys tells the listening
replicas which agent changed (``NOTIFY nexus_agents, '<agent_id>'``).

PostgreSQL only. The notice is sent when the writing transaction commits, so a
replica hears of a change exactly when the change becomes visible; a SQLite
deployment is one process, whose own writes drop its cached agents.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CHANNEL = "nexus_agents"
_FUNCTION = "nexus_notify_agent_change"
# Both tables name the agent in agent_id: agents (enabled, bindings, scopes,
# sessions_valid_after) and agent_keys (a rotation, a key's expiry).
_TABLES = ("agents", "agent_keys")


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if not _postgres():
        return
    op.execute(
        f"""
        CREATE FUNCTION {_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('{CHANNEL}', OLD.agent_id);
            ELSE
                PERFORM pg_notify('{CHANNEL}', NEW.agent_id);
                -- An agent's id never changes, but if a row ever moved the old
                -- holder changed too.
                IF TG_OP = 'UPDATE' AND OLD.agent_id IS DISTINCT FROM NEW.agent_id THEN
                    PERFORM pg_notify('{CHANNEL}', OLD.agent_id);
                END IF;
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    for table in _TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_notify_change AFTER INSERT OR UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {_FUNCTION}()"
        )


def downgrade() -> None:
    if not _postgres():
        return
    for table in _TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_notify_change ON {table}")
    op.execute(f"DROP FUNCTION IF EXISTS {_FUNCTION}()")
