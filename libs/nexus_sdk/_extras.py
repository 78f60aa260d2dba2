"""Modules that need an optional extra say which one when it is missing.

``pip install nexus-sdk`` brings only httpx; ``nexus_sdk.bridge`` and
``nexus_sdk.mcp`` need more. A bare "No module named 'grpc'" would not tell an
agent's author what to install.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["requires_extra"]


@contextmanager
def requires_extra(extra: str) -> Iterator[None]:
    """Wrap a module's third-party imports: a missing one names the extra to install."""
    try:
        yield
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"{exc.name} is not installed; it comes with the SDK's {extra!r} extra: "
            f"pip install 'nexus-sdk[{extra}]'",
            name=exc.name,
        ) from exc
