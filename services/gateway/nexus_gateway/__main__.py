"""``python -m nexus_gateway``: serve the public gRPC API."""

from __future__ import annotations

import asyncio
import os

from nexus_common import configure_logging, run_service, run_until_signalled, tracing

from .server import create_gateway
from .settings import GatewaySettings


async def _serve(settings: GatewaySettings) -> None:
    gateway = create_gateway(settings)
    await gateway.start_caches()
    browser = asyncio.create_task(gateway.browser.serve())

    async def stop() -> None:
        gateway.browser.stop()
        await browser
        await gateway.close()

    await run_until_signalled(
        gateway.server,
        settings.shutdown_grace_seconds,
        stop,
        metrics_listen=settings.metrics_listen,
    )


def main() -> None:
    settings = GatewaySettings.from_env(os.environ)
    configure_logging("gateway", settings.log_level)
    with tracing("gateway", os.environ):
        run_service(_serve(settings))


if __name__ == "__main__":
    main()
