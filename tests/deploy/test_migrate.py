"""``python -m nexus_<service> migrate`` is what the migration Job runs and
``migrate --check`` what each replica waits on: with nothing but the database URL, the first
brings a fresh database to head and exits 0; the second answers 1 until then, 0 after."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

TABLES = {
    "broker": {"alembic_version_broker", "providers", "connections", "agent_sessions"},
    "policy": {"alembic_version_policy", "agents", "agent_keys", "audit_outbox"},
}


def _run(service: str, *args: str, database: Path) -> subprocess.CompletedProcess[str]:
    # Only the database URL: the Job is given no other secret.
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": f"sqlite:///{database}"}
    return subprocess.run(
        [sys.executable, "-m", f"nexus_{service}", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _tables(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


@pytest.mark.parametrize("service", ["broker", "policy"])
def test_migrate_creates_the_tables_and_check_reports_it(service: str, tmp_path: Path) -> None:
    database = tmp_path / "nexus.db"
    before = _run(service, "migrate", "--check", database=database)
    assert before.returncode == 1, before.stderr

    migrated = _run(service, "migrate", database=database)
    assert migrated.returncode == 0, migrated.stderr
    assert TABLES[service] <= _tables(database)

    after = _run(service, "migrate", "--check", database=database)
    assert after.returncode == 0, after.stderr
    again = _run(service, "migrate", database=database)
    assert again.returncode == 0, again.stderr


def test_both_services_migrate_one_database(tmp_path: Path) -> None:
    database = tmp_path / "shared.db"
    for service in ("broker", "policy"):
        assert _run(service, "migrate", database=database).returncode == 0
    for service in ("broker", "policy"):
        assert _run(service, "migrate", "--check", database=database).returncode == 0
    assert TABLES["broker"] | TABLES["policy"] <= _tables(database)


@pytest.mark.parametrize("service", ["broker", "policy"])
def test_an_unknown_subcommand_is_refused(service: str, tmp_path: Path) -> None:
    result = _run(service, "migrate", "--bogus", database=tmp_path / "x.db")
    assert result.returncode != 0 and "usage" in result.stderr
    result = _run(service, "migrat", database=tmp_path / "x.db")
    assert result.returncode != 0
