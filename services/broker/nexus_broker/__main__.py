"""``python -m nexus_broker``: migrate (unless disabled) and serve."""

from __future__ import annotations

import asyncio
import os

from nexus_common import configure_logging, run_until_signalled

from .server import create_broker, migrate_database
from .settings import BrokerSettings


async def _serve(settings: BrokerSettings) -> None:
    broker = create_broker(settings)
    await run_until_signalled(broker.server, settings.shutdown_grace_seconds, broker.close)


def main() -> None:
    settings = BrokerSettings.from_env(os.environ)
    configure_logging("broker", settings.log_level)
    if settings.auto_migrate:
        migrate_database(settings.database_url)
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
