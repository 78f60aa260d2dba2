"""``python -m nexus_broker``: migrate (unless disabled) and serve.

``python -m nexus_broker reseal`` instead re-seals every stored secret under
the keyring's newest key and exits; run it after adding a key and before
removing an old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

from nexus_common import Caller, configure_logging, current_caller, run_until_signalled

from .server import create_broker, create_core, migrate_database
from .service_layer.providers import reseal_secrets
from .settings import BrokerSettings


async def _serve(settings: BrokerSettings) -> None:
    broker = create_broker(settings)
    refresh_loop = (
        asyncio.create_task(broker.core.refresher.run(settings.refresh_interval_seconds))
        if settings.refresh_loop
        else None
    )

    async def stop() -> None:
        if refresh_loop is not None:
            refresh_loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresh_loop
        await broker.close()

    await run_until_signalled(broker.server, settings.shutdown_grace_seconds, stop)


async def _reseal(settings: BrokerSettings) -> int:
    core = create_core(settings)
    current_caller.set(Caller("operator", "reseal"))
    try:
        return await reseal_secrets(core.deps.uow, core.deps.clock())
    finally:
        await core.close()


def main(argv: list[str]) -> None:
    settings = BrokerSettings.from_env(os.environ)
    configure_logging("broker", settings.log_level)
    if settings.auto_migrate:
        migrate_database(settings.database_url)
    if argv == ["reseal"]:
        print(f"re-sealed {asyncio.run(_reseal(settings))} secrets")
    elif not argv:
        asyncio.run(_serve(settings))
    else:
        raise SystemExit("usage: python -m nexus_broker [reseal]")


if __name__ == "__main__":
    main(sys.argv[1:])
