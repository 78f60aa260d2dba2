"""``python -m nexus_policy``: serve scope decisions to the other services."""

from __future__ import annotations

import asyncio
import os

from nexus_common import configure_logging, run_until_signalled

from .server import create_policy_server
from .settings import PolicySettings


async def _serve(settings: PolicySettings) -> None:
    await run_until_signalled(create_policy_server(settings), settings.shutdown_grace_seconds)


def main() -> None:
    settings = PolicySettings.from_env(os.environ)
    configure_logging("policy", settings.log_level)
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
