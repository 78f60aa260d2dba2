"""Logging set-up and redaction of secrets from anything recorded."""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = ["configure_logging", "redact"]

REDACTED = "[REDACTED]"
# Field names whose values are secrets wherever they appear ("token_url" is not).
_SECRET_NAME = re.compile(r"(secret|password|passwd|token|api_?key|private_key)$", re.I)


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with every secret-named field's value hidden."""
    if isinstance(value, dict):
        return {
            key: REDACTED
            if _SECRET_NAME.search(str(key)) and item not in ("", None)
            else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def configure_logging(service: str, level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s {service} %(levelname)s %(name)s %(message)s",
    )
