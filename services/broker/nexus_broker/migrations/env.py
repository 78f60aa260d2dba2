from __future__ import annotations

from nexus_broker.adapters.orm import metadata
from nexus_common._alembic_env import run_migrations

run_migrations(metadata)
