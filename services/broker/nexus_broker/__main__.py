"""``python -m nexus_broker``: migrate (unless disabled) and serve.

``python -m nexus_broker reseal`` instead re-seals every stored secret under
the keyring's primary key and exits; run it once every replica seals with
that key (``NEXUS_KEYRING_PRIMARY``), and before an old key is removed.

``python -m nexus_broker migrate`` upgrades the schema and exits (the
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
from datetime import timedelta

from nexus_common import (
    Caller,
    Env,
    configure_logging,
    current_caller,
    run_service,
    run_until_signalled,
    tracing,
)

from .server import MIGRATIONS, BrokerCore, create_broker, create_core, migrate_database
from .service_layer.connections import ConnectionDeps, expire_unconfirmed
from .service_layer.providers import reseal_secrets
from .service_layer.sessions import purge_sessions
from .settings import BrokerSettings, database_role

log = logging.getLogger("nexus.broker")

_PURGE_INTERVAL_SECONDS = 3600.0
_USAGE = "usage: python -m nexus_broker [reseal | migrate [--check]]"


async def _purge_loop(core: BrokerCore, retention: timedelta) -> None:
    """Hourly, forget long-ended sessions so the table stays small."""
    while True:
        try:
            purged = await purge_sessions(core.sessions, retention)
            if purged:
                log.info("purged %d ended sessions", purged)
        except Exception:
            log.exception("purging ended sessions failed")
        await asyncio.sleep(_PURGE_INTERVAL_SECONDS)


async def _expire_loop(deps: ConnectionDeps, interval: float) -> None:
    """Unconfirmed connections whose time ran out lose their tokens, at the
    provider too, soon after: nobody may confirm them any more."""
    while True:
        try:
            expired = await expire_unconfirmed(deps)
            if expired:
                log.info("expired %d unconfirmed connections", expired)
        except Exception:
            log.exception("expiring unconfirmed connections failed")
        await asyncio.sleep(interval)


async def _serve(settings: BrokerSettings) -> None:
    broker = create_broker(settings)
    await broker.core.start_caches()
    tasks = [
        asyncio.create_task(
            _purge_loop(broker.core, timedelta(seconds=settings.session_retention_seconds))
        ),
        asyncio.create_task(
            _expire_loop(broker.core.connections, settings.refresh_interval_seconds)
        ),
    ]
    if settings.refresh_loop:
        tasks.append(
            asyncio.create_task(
                broker.core.refresher.run(
                    settings.refresh_interval_seconds,
                    concurrency=settings.refresh_concurrency,
                )
            )
        )

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await broker.close()

    await run_until_signalled(
        broker.server, settings.shutdown_grace_seconds, stop, metrics_listen=settings.metrics_listen
    )


async def _reseal(settings: BrokerSettings) -> int:
    core = create_core(settings)
    current_caller.set(Caller("operator", "reseal"))
    try:
        return await reseal_secrets(core.deps.uow, core.deps.clock())
    finally:
        await core.close()


def _migrate(args: list[str]) -> int:
    # Only the database URL: the migration job is given no other secret.
    env = Env(os.environ)
    configure_logging("broker", env.text("NEXUS_LOG_LEVEL", "INFO"))
    return MIGRATIONS.command(
        args, env.database_url("NEXUS_BROKER_DATABASE_URL"), database_role(os.environ)
    )


def main(argv: list[str]) -> None:
    if argv[:1] == ["migrate"]:
        raise SystemExit(_migrate(argv[1:]))
    settings = BrokerSettings.from_env(os.environ)
    configure_logging("broker", settings.log_level)
    if settings.auto_migrate:
        migrate_database(settings.database_url)
    if argv == ["reseal"]:
        # The version says which NEXUS_KEYRING_PRIMARY this run saw: one left
        # at the old key re-seals nothing.
        count = asyncio.run(_reseal(settings))
        print(f"re-sealed {count} secrets under key version {settings.keyring.primary}")
    elif not argv:
        with tracing("broker", os.environ):
            run_service(_serve(settings))
    else:
        raise SystemExit(_USAGE)


if __name__ == "__main__":
    main(sys.argv[1:])
