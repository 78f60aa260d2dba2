"""Each service runs on a PostgreSQL role of its own that reads and writes rows and
changes no schema; the migration has its own role that does (deploy/postgres/roles.sql).

Before these roles, one role with every right on the schema served broker, policy and
migrations alike: any statement below that is refused here would have run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from nexus.broker.v1 import audit_pb2, providers_pb2, sessions_pb2
from nexus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from nexus.policy.v1 import agents_pb2
from psycopg import errors

from tests.conftest import Services
from tests.integration.helpers import ADMIN
from tests.support.postgres import fresh_database, postgres_url

ROOT = Path(__file__).resolve().parents[2]
ROLES_SQL = ROOT / "deploy" / "postgres" / "roles.sql"


def _as(url: str, role: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))


def _libpq(url: str) -> str:
    return "postgresql://" + url.partition("://")[2]


class Roles:
    def __init__(self, url: str, suffix: str) -> None:
        self.url = url  # the superuser's, for setting up and tearing down
        self.migrate = f"nexus_migrate_{suffix}"
        self.broker = f"nexus_broker_{suffix}"
        self.policy = f"nexus_policy_{suffix}"

    def url_of(self, role: str) -> str:
        return _as(self.url, role)


@pytest.fixture
def roles() -> Iterator[Roles]:
    url, drop = fresh_database(postgres_url())
    made = Roles(url, uuid.uuid4().hex[:8])
    psql = [
        "psql",
        _libpq(url),
        "-q",
        "-v",
        f"migrate_role={made.migrate}",
        "-v",
        f"broker_role={made.broker}",
        "-v",
        f"policy_role={made.policy}",
        "-f",
        str(ROLES_SQL),
    ]
    subprocess.run(psql, check=True, capture_output=True)
    try:
        for service, role in (("broker", made.broker), ("policy", made.policy)):
            env = {
                **os.environ,
                "DATABASE_URL": made.url_of(made.migrate),
                f"NEXUS_{service.upper()}_DATABASE_ROLE": role,
            }
            subprocess.run(
                [sys.executable, "-m", f"nexus_{service}", "migrate"],
                check=True,
                env=env,
                capture_output=True,
            )
        yield made
    finally:
        with psycopg.connect(_libpq(url), autocommit=True) as conn:
            for role in (made.broker, made.policy, made.migrate):
                conn.execute(
                    psycopg.sql.SQL("DROP OWNED BY {}").format(psycopg.sql.Identifier(role))
                )
        drop()
        with psycopg.connect(_libpq(postgres_url()), autocommit=True) as conn:
            for role in (made.broker, made.policy, made.migrate):
                conn.execute(
                    psycopg.sql.SQL("DROP ROLE IF EXISTS {}").format(psycopg.sql.Identifier(role))
                )


# What a run-time role must not do, in its own service's tables and the other's.
SCHEMA_CHANGES = {
    "broker": [
        "CREATE TABLE intruder (id int)",
        "ALTER TABLE connections ADD COLUMN stolen text",
        "DROP TABLE audit_events",
        "TRUNCATE audit_events",
        "CREATE INDEX intruder ON connections (id)",
        "DROP TRIGGER connections_change_notice ON connections",
        "DELETE FROM alembic_version_broker",
        "SELECT * FROM agents",
        "SELECT * FROM alembic_version_policy",
    ],
    "policy": [
        "CREATE TABLE intruder (id int)",
        "ALTER TABLE agents ADD COLUMN stolen text",
        "DROP TABLE audit_outbox",
        "TRUNCATE agents",
        "DELETE FROM alembic_version_policy",
        "SELECT * FROM connections",
        "SELECT * FROM providers",
    ],
}
OWN_ROWS = {
    "broker": ["SELECT count(*) FROM connections", "DELETE FROM audit_events WHERE false"],
    "policy": ["SELECT count(*) FROM agents", "DELETE FROM audit_outbox WHERE false"],
}


@pytest.mark.parametrize("service", ["broker", "policy"])
def test_a_run_time_role_reads_and_writes_its_rows_and_changes_no_schema(
    roles: Roles, service: str
) -> None:
    role = roles.broker if service == "broker" else roles.policy
    with psycopg.connect(_libpq(roles.url_of(role)), autocommit=True) as conn:
        for statement in OWN_ROWS[service]:
            conn.execute(statement)
        for statement in SCHEMA_CHANGES[service]:
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
        # Nor by naming the schema.
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.intruder (id int)")


def test_the_migration_role_owns_the_schema(roles: Roles) -> None:
    with psycopg.connect(_libpq(roles.url), autocommit=True) as conn:
        owners = {
            owner
            for (owner,) in conn.execute(
                "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'"
            )
        }
    assert owners == {roles.migrate}


@pytest.fixture
def database_url(roles: Roles) -> str:
    """The stack's migrations run as the migration role (a no-op: the roles fixture migrated)."""
    return roles.url_of(roles.migrate)


@pytest.fixture
def per_service_overrides(roles: Roles) -> dict[str, dict[str, str]]:
    return {
        "broker": {"NEXUS_BROKER_DATABASE_URL": roles.url_of(roles.broker)},
        "policy": {"NEXUS_POLICY_DATABASE_URL": roles.url_of(roles.policy)},
    }


async def test_the_services_run_on_their_own_roles(services: Services) -> None:
    gateway = services.gateway
    await gateway_pb2_grpc.ProviderServiceStub(gateway).CreateProvider(
        gateway_pb2.CreateProviderRequest(
            provider=providers_pb2.Provider(
                name="internal-ops", auth_type="nexus", scopes=["acme:gliding"]
            )
        ),
        metadata=ADMIN,
    )
    agents = gateway_pb2_grpc.AgentServiceStub(gateway)
    created = await agents.CreateAgent(
        gateway_pb2.CreateAgentRequest(
            agent=agents_pb2.Agent(agent_id="ops-agent", allowed_scopes=["acme:gliding"])
        ),
        metadata=ADMIN,
    )
    session = await gateway_pb2_grpc.SessionServiceStub(gateway).CreateAgentSession(
        gateway_pb2.CreateAgentSessionRequest(
            session=sessions_pb2.CreateAgentSessionRequest(
                agent_id="ops-agent", provider="internal-ops", scopes=["acme:gliding"]
            )
        ),
        metadata=(("authorization", f"Bearer {created.agent_key}"),),
    )
    assert session.session_id
    await agents.UpdateAgent(
        gateway_pb2.UpdateAgentRequest(agent_id="ops-agent", agent=agents_pb2.Agent(enabled=False)),
        metadata=ADMIN,
    )
    await agents.DeleteAgent(agents_pb2.DeleteAgentRequest(agent_id="ops-agent"), metadata=ADMIN)
    listed = await gateway_pb2_grpc.AuditServiceStub(gateway).ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(page_size=100), metadata=ADMIN
    )
    assert "sessions.ended" in {e.action for e in listed.audit_events}
