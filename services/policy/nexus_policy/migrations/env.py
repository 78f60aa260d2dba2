from __future__ import annotations

from nexus_common._alembic_env import run_migrations
from nexus_policy.adapters.orm import metadata

run_migrations(metadata)
