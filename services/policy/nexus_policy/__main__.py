"""``python -m nexus_policy``: migrate (unless disabled), then serve agent and
session decisions to the other services.

``python -m nexus_policy migrate`` upgrades the schema and exits (the
Kubernetes migration Job); ``migrate --check`` exits 0 only when the schema is
already at head (what a replica's init container waits for). Both need only
the database URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys

from nexus_common import Env, configure_logging, run_service, run_until_signalled, tracing

from .server import MIGRATIONS, create_policy, migrate_database
from .settings import PolicySettings, database_role

log = logging.getLogger("nexus.policy")

_USAGE = "usage: python -m nexus_policy [migrate [--check]]"


async def _serve(settings: PolicySettings) -> None:
    policy = create_policy(settings)
    await policy.start_caches()
    forwarding = asyncio.create_task(policy.forwarder.run(settings.audit_forward_interval_seconds))

    async def stop() -> None:
        forwarding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await forwarding
        try:
            await policy.forwarder.forward_once()
        except Exception:
            # Nothing is lost: the outbox keeps it for the next start.
            log.warning("audit events stay in the outbox until the next start")
        await policy.close()

    await run_until_signalled(
        policy.server, settings.shutdown_grace_seconds, stop, metrics_listen=settings.metrics_listen
    )


def _migrate(args: list[str]) -> int:
    # Only the database URL: the migration job is given no other secret.
    env = Env(os.environ)
    configure_logging("policy", env.text("NEXUS_LOG_LEVEL", "INFO"))
    return MIGRATIONS.command(
        args, env.database_url("NEXUS_POLICY_DATABASE_URL"), database_role(os.environ)
    )


def main(argv: list[str]) -> None:
    if argv[:1] == ["migrate"]:
        raise SystemExit(_migrate(argv[1:]))
    if argv:
        raise SystemExit(_USAGE)
    settings = PolicySettings.from_env(os.environ)
    configure_logging("policy", settings.log_level)
    if settings.auto_migrate:
        migrate_database(settings.database_url)
    with tracing("policy", os.environ):
        run_service(_serve(settings))


if __name__ == "__main__":
    main(sys.argv[1:])
